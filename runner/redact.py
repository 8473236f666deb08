"""What the record may show: secret-looking values masked, URLs without their passwords.

Applied to everything that leaves the machine or the terminal: params, tags, run
names, the config artifact, printed links and error lines.
"""

import re

SECRET = re.compile(r"password|passwd|secret|token|api_?key|credential|private_?key", re.IGNORECASE)
MASK = "***"


def redact_uri(text):
    """A URL without the password in its user-info (`http://u:p@h` -> `http://u:***@h`); other text as is."""
    if not isinstance(text, str) or "@" not in text or "://" not in text:
        return text
    return re.sub(r"(?<=://)([^/@:\s]*):([^/@\s]*)@", rf"\1:{MASK}@", text)


def redact(key, value):
    """`value` as the record may show it: masked when its key looks secret, URLs without passwords."""
    if SECRET.search(str(key).rpartition(".")[2]):
        return MASK
    return redact_uri(value)


def redact_override(override):
    """`+dataset.password=x` -> `+dataset.password=***`; a URL value loses its password."""
    key, sep, value = override.partition("=")
    return f"{key}{sep}{redact(key.lstrip('+~'), value)}" if sep else override


def redact_tree(tree, key=""):
    """A plain config container with every secret-looking value masked."""
    if isinstance(tree, dict):
        return {k: redact_tree(v, f"{key}.{k}") for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact_tree(v, key) for v in tree]
    return redact(key, tree)
