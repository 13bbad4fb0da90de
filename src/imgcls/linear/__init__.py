"""The lecture's mathematics in tensors alone: model, losses, a stack's update rule, schedules, metrics, gradcheck."""
