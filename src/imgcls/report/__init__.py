"""What a run shows: the terminal, figures, templates, the web page, TensorBoard, comparisons."""
