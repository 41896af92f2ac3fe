"""Gradio front end over the ``deft`` library."""
