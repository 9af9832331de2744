"""Real text for long-input tests (importable by name from any test directory, unlike a conftest)."""


def long_text() -> str:
    """Deterministic English prose that ships with CPython (the pydoc topic texts)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))
