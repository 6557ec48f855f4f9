"""The bottom room: reading and writing model folders (safetensors + JSON, atomically), finding shipped models."""

from .files import PRETRAINED_DIR, atomic_save_file, atomic_write_json, load_model_folder, resolve_pretrained, save_model_folder

__all__ = ["PRETRAINED_DIR", "atomic_save_file", "atomic_write_json", "load_model_folder", "resolve_pretrained",
           "save_model_folder"]
