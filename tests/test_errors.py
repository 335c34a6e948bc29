"""sisa's errors: what a caller of the Python API can catch."""

from sisa.errors import SisaError


def test_sisa_error_is_a_value_error():
    assert issubclass(SisaError, ValueError)
