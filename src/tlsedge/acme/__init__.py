"""ACME (RFC 8555): accounts, orders and renewals (control side), and the challenge answers workers serve."""
