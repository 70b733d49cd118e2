"""Regenerate hpmkd/model_table.json (model names and default parameters for the generated
teacher/student/assistant config groups) from the model registry: run after adding a model."""

from hpmkd.config import write_model_table

if __name__ == "__main__":
    print(f"wrote {write_model_table()}")
