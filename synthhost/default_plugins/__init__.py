"""Built-in behaviour, shipped as plugins registered in every host."""
