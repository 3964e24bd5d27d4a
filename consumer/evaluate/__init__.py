"""`memeguard evaluate`: score a bundle on a labelled split offline."""
