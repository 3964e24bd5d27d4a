"""`memeguard replay`: evaluate a bundle (or two side by side) on a labelled topic."""
