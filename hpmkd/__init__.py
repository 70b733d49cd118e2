"""hpmkd: knowledge distillation experiments."""
