"""What the record may show: secret-looking values masked, URLs without their passwords.

Applied to everything that leaves the machine or the terminal: params, tags, run
names, the config artifact, printed links and error lines.
"""

import logging
import re

SECRET = re.compile(r"password|passwd|secret|token|api_?key|credential|private_?key", re.IGNORECASE)
MASK = "***"


def redact_uri(text):
    """A URL without the password in its user-info (`http://u:p@h` -> `http://u:***@h`); other text as is."""
    if not isinstance(text, str) or "@" not in text or "://" not in text:
        return text
    return re.sub(r"(?<=://)([^/@:\s]*):([^/@\s]*)@", rf"\1:{MASK}@", text)


def redact(key, value):
    """`value` as the record may show it: masked when any part of its dotted key looks secret
    (`dataset.password`, `dataset.password.0`, `db.credentials.user`), URLs without passwords."""
    if any(SECRET.search(part) for part in str(key).split(".")):
        return MASK
    return redact_uri(value)


# `key=value` or `key: value` in free text whose key looks secret: Hydra's logged override lists.
SECRET_ASSIGNMENT = re.compile(
    r"([\w.+~-]*(?:password|passwd|secret|token|api_?key|credential|private_?key)[\w.-]*\s*[=:]\s*)([^\s,'\"\]}]+)",
    re.IGNORECASE,
)


def redact_text(text):
    """Free text (a log line, an error message) with URL passwords and secret-looking assignments masked."""
    return SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + MASK, redact_uri(str(text)))


def install_log_redaction():
    """Every log record of this process (Hydra's launchers log each job's overrides) passes redact_text."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacting", False):
        return

    def redacting(*args, **kwargs):
        record = factory(*args, **kwargs)
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return record

    redacting.redacting = True
    logging.setLogRecordFactory(redacting)


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
