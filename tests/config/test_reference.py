from async_rl.config.reference import flag_reference
from async_rl.config.sections import SECTIONS
from tests.conftest import REPO


def test_docs_flag_reference_is_the_generated_one():
    """Adding or changing a flag without regenerating docs/flags.md fails here."""
    assert (REPO / "docs" / "flags.md").read_text() == flag_reference(), (
        "docs/flags.md is stale: run python -m async_rl.config.reference > docs/flags.md")


def test_every_flag_is_documented_with_help():
    text = flag_reference()
    for cls in SECTIONS.values():
        for name, field in cls.__dataclass_fields__.items():
            assert f"`--{name.replace('_', '-')}`" in text and field.metadata["help"], name
