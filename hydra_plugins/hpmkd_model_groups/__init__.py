"""The generated `teacher`, `student` and `assistant` config groups (hpmkd-models://)."""
