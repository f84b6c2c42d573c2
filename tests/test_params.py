import pytest

from repl.params import PRESETS, SamplingParams, parse_value, preset


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"temperature": -1}, "temperature must be 0 or more"),
        ({"top_p": 0}, "top_p must be more than 0"),
        ({"top_p": 1.5}, "top_p must be more than 0"),
        ({"top_k": -1}, "top_k must be a whole number"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be a whole number"),
        ({"min_p": 1.0}, "min_p must be 0 or more and less than 1"),
        ({"repetition_penalty": 0}, "repetition_penalty must be from 0.05 to 20"),
        ({"repetition_penalty": 1e-300}, "repetition_penalty must be from 0.05 to 20"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty must be from"),
        ({"temperature": 1e-40}, "temperature must be 0 .greedy. or at least 0.01"),
        ({"temperature": float("inf")}, "temperature must be a number"),
        ({"top_k": 10**30}, "top_k must be a whole number from 0 to 1000000"),
        ({"no_repeat_ngram_size": 10**30}, "no_repeat_ngram_size must be a whole number from"),
        ({"max_new_tokens": 10**30}, "max_new_tokens must be at most 1000000"),
        ({"top_p": float("inf")}, "top_p must be more than 0"),
        ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size"),
        ({"seed": -5}, "seed must be a whole number"),
        ({"stop": ("",)}, "stop strings must be non-empty"),
        ({"temperature": float("nan")}, "temperature must be a number"),
    ],
)
def test_invalid_values_raise_a_plain_sentence(changes, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**changes)


def test_replace_validates_too():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams().replace(temperature=-0.1)


def test_max_new_tokens_must_fit_the_context():
    SamplingParams(max_new_tokens=255).check_fits(256)
    SamplingParams(max_new_tokens=10_000).check_fits(None)
    with pytest.raises(ValueError, match="less than the model's context of 256"):
        SamplingParams(max_new_tokens=256).check_fits(256)


def test_presets_are_valid_and_distinct():
    assert set(PRESETS) >= {"greedy", "balanced", "creative", "precise"}
    assert preset("greedy").greedy
    assert not preset("creative").greedy
    assert len({p.temperature for p in PRESETS.values()}) == len(PRESETS)
    with pytest.raises(ValueError, match="unknown preset 'hot'.*greedy"):
        preset("hot")


def test_greedy_kwargs_turn_every_sampling_knob_off():
    kwargs = SamplingParams(temperature=0).to_generate_kwargs()
    assert kwargs["do_sample"] is False
    assert kwargs["temperature"] is None and kwargs["top_k"] is None and kwargs["top_p"] is None


def test_sampling_kwargs_carry_every_field():
    params = SamplingParams(max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.8, min_p=0.1,
                            repetition_penalty=1.2, no_repeat_ngram_size=2)
    assert params.to_generate_kwargs() == {
        "max_new_tokens": 7, "do_sample": True, "temperature": 0.5, "top_k": 3, "top_p": 0.8,
        "min_p": 0.1, "repetition_penalty": 1.2, "no_repeat_ngram_size": 2,
    }


def test_dict_round_trip_and_unknown_keys():
    params = SamplingParams(seed=3, stop=("\n\n", "END"))
    assert SamplingParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="unknown sampling parameter"):
        SamplingParams.from_dict({"temprature": 1})


def test_parse_value_from_user_text():
    assert parse_value("temperature", " 0.5 ") == 0.5
    assert parse_value("top-k", "40") == 40
    assert parse_value("seed", "random") is None
    assert parse_value("stop", "a, b,,") == ("a", "b")
    assert parse_value("do_sample", "off") is False
    with pytest.raises(ValueError, match="top_k must be a whole number, not 'x'"):
        parse_value("top_k", "x")
    with pytest.raises(ValueError, match="repetition_penalty must be a number, not 'inf'"):
        parse_value("repetition_penalty", "inf")
    with pytest.raises(ValueError, match="temperature must be a number, not 'nan'"):
        parse_value("temperature", "nan")
    with pytest.raises(ValueError, match="unknown parameter 'heat'"):
        parse_value("heat", "1")
    assert SamplingParams().with_text("temperature", "1.3").temperature == 1.3
