from onegen.annotators.caption_text import check, instruction, normalise_entity, repeated_ngram

WORDS = dict(min_words=8, max_words=20, max_entities=3)
CAPTION = "A brown dog runs across a green lawn while a child in a red coat watches from the porch."


def test_instruction_asks_for_both_parts_with_the_limits():
    text = instruction(100, 150, 10)
    assert "100 to 150 words" in text and "up to 10" in text
    assert "CAPTION:" in text and "ENTITIES:" in text


def test_valid_answer_gives_caption_and_normalised_capped_entities():
    answer = f"**CAPTION:** {CAPTION}\n\n**Entities**: 1. Dog, the Child; a red coat, dog, porch.\n\nNote: ..."
    c = check(answer, **WORDS)
    assert c.error is None
    assert c.caption == CAPTION
    assert c.entities == ("dog", "child", "red coat")  # dedupe, articles and enumerators gone, capped at 3


def test_bullet_lists_and_lowercase_labels_parse():
    c = check(f"caption: {CAPTION}\nentities:\n- Dog\n- Lawn\n", **WORDS)
    assert c.error is None and c.entities == ("dog", "lawn")


def test_entity_normalisation_rejects_what_is_not_a_short_noun():
    assert normalise_entity("  2) The Red Car. ") == "red car"
    assert normalise_entity("t-shirt") == "t-shirt"
    assert normalise_entity("a man wearing a bright red shirt") is None  # > 4 words
    assert normalise_entity("42") is None and normalise_entity("") is None


def test_each_failure_has_its_reason():
    assert check("A dog on a lawn.", **WORDS).error == "malformed: no 'CAPTION:' label"
    assert check(f"CAPTION: {CAPTION}", **WORDS).error.startswith("malformed: no 'ENTITIES:'")
    short = check("CAPTION: A dog.\nENTITIES: dog", **WORDS)
    assert short.error == "caption too short: 2 words < 8" and short.entities == ("dog",)
    long = check(f"CAPTION: {CAPTION} {CAPTION}\nENTITIES: dog", **WORDS)
    assert long.error.startswith("caption too long: 38 words")
    assert check(f"CAPTION: {CAPTION}\nENTITIES: 42, a man wearing a bright red shirt", **WORDS).error.startswith(
        "no entities")
    assert check(f"CAPTION: {CAPTION}\nENTITIES: dog", truncated=True, **WORDS).error.startswith("truncated")


def test_repetition_loop_is_caught_but_normal_prose_is_not():
    loop = "the dog is on the lawn and the dog is on the lawn and the dog is on the lawn"
    assert repeated_ngram(loop) == ("the dog is on", 3)
    assert repeated_ngram(CAPTION) is None
    c = check(f"CAPTION: {loop}\nENTITIES: dog", min_words=8, max_words=40, max_entities=3)
    assert c.error == "repetition loop: 'the dog is on' 3 times"
