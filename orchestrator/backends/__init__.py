"""Where per-GPU workers run: Docker containers or local processes, behind one small interface."""
