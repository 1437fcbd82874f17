"""The only part of core that imports streamlit: cached resources, shared widgets, formatting."""
