"""The AlexNet variants, their registry, weight initialisation, and the layer table."""
