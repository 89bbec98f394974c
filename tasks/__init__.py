"""Built-in tasks: super-resolution, low-light, underwater, dehazing, deraining, and paired folders."""
