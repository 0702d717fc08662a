"""The bank app: domain classes kept by memimg, and JSON views over them."""
