from async_rl.config.reference import flag_reference, slime_flag_reference
from async_rl.config.sections import SECTIONS
from tests.conftest import REPO


def test_docs_flag_reference_is_the_generated_one():
    """Adding or changing a flag without regenerating docs/flags.md fails here."""
    assert (REPO / "docs" / "flags.md").read_text() == flag_reference(), (
        "docs/flags.md is stale: run python -m async_rl.config.reference > docs/flags.md")


def test_docs_slime_flag_reference_is_the_generated_one():
    assert (REPO / "docs" / "slime-flags.md").read_text() == slime_flag_reference(), (
        "docs/slime-flags.md is stale: run python -m async_rl.config.reference --slime > docs/slime-flags.md")


def test_every_flag_is_documented_with_help():
    text = flag_reference()
    for cls in SECTIONS.values():
        for name, field in cls.__dataclass_fields__.items():
            assert f"`--{name.replace('_', '-')}`" in text and field.metadata["help"], name


def test_every_slime_flag_the_migration_table_calls_the_same_is_one_of_ours():
    """Rows of docs/migrating-from-slime.md whose second column starts with "same": each slime flag parses here."""
    import re

    from async_rl.config.parser import build_parser

    ours = {s for a in build_parser()._actions for s in a.option_strings}
    rows = [line.split("|")[1:3] for line in (REPO / "docs" / "migrating-from-slime.md").read_text().splitlines()
            if line.startswith("| `--")]
    same = [slime for slime, status in rows if status.strip().startswith("same")]
    flags = {f for cell in same for f in re.findall(r"(--[a-z0-9][a-z0-9-]*[a-z0-9])(?![-*a-z0-9])", cell)}
    assert len(same) >= 10 and "--kl-loss-coef" in flags and "--balance-data" in flags
    assert sorted(flags - ours) == []
