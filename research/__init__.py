"""Research studies that read the project's models/ (and schemas/, scoring/, consumer/) but are not part of the
shipped product: the model sweeps (`sweep*.py`) and the nested-CV studies. Nothing outside research/ imports it."""
