"""A minimal Django project whose domain model is kept by memimg (see README.md)."""
