"""Research studies that read the project's models/ but are not part of the shipped product."""
