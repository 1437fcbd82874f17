"""Who may reach the app: password hashes, slow failed logins, the listening address rule, a private data folder.

Plain Python (no streamlit): the login gate in core/ui/auth.py and the CLI (`python -m core auth`) build on it.
"""
