"""HPM-KD's components (METHODS.md section 2), each usable on its own."""
