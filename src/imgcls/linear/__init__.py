"""The lecture's mathematics in tensors alone: the model, losses, the update rule of a stack, schedules, metrics, the gradient check."""
