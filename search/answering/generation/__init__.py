"""Text generators behind one small interface (see ``base``), chosen in settings."""
