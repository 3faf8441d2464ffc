"""The networks build and train run: timm teachers and students, each with its own input normalisation
and autocast precision."""
