"""The command line and the Gradio app: each entry point parses its input and calls the layers below."""
