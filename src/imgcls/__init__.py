"""imgcls: train and study linear image classifiers, f(x) = Wx + b on flattened pixels."""

__version__ = "0.1.0"
