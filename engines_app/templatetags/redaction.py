"""``{{ text|redact }}``: a message without the credentials of any URL it quotes."""

from django import template

from ..runtime.redact import redact_text

register = template.Library()


@register.filter
def redact(value: object) -> str:
    return redact_text(str(value))
