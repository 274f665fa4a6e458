"""kx_spacy.Seq2SeqCorpus.v1 and kx_spacy.GenerationScorer.v1."""
import pytest
import spacy

from kx_spacy.errors import DataFormatError
from kx_spacy.extensions import install_extensions
from kx_spacy.generation.corpus import example_target, read_pairs
from kx_spacy.generation.scoring import score_generation, text_scores


def test_corpus_reads_pairs_with_targets(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("\ufeff春天来了\t秋月明\n\n山水美丽\t花鸟快乐\r\n", encoding="utf8")
    nlp = spacy.blank("zh")
    reader = spacy.registry.readers.get("kx_spacy.Seq2SeqCorpus.v1")(str(path))
    examples = list(reader(nlp))
    assert [eg.predicted.text for eg in examples] == ["春天来了", "山水美丽"]
    assert [example_target(eg) for eg in examples] == ["秋月明", "花鸟快乐"]
    assert len(read_pairs(path, limit=1)) == 1


@pytest.mark.parametrize("line", ["no tab here", "\tonly target", "only source\t"])
def test_corpus_bad_lines(tmp_path, line):
    path = tmp_path / "bad.tsv"
    path.write_text(f"a\tb\n{line}\n", encoding="utf8")
    with pytest.raises(DataFormatError, match="line 2"):
        read_pairs(path)
    with pytest.raises(DataFormatError):
        read_pairs(tmp_path / "missing.tsv")


def test_text_scores():
    perfect = text_scores(["the cat sat on the mat", "a dog ran in the park"],
                          ["the cat sat on the mat", "a dog ran in the park"])
    assert perfect["chrf"] == pytest.approx(1.0) and perfect["bleu"] == pytest.approx(1.0)
    assert perfect["exact"] == 1.0
    poor = text_scores(["xyz", "a dog"], ["the cat sat", "a dog"])
    assert poor["exact"] == 0.5 and poor["chrf"] < 0.7


def test_score_generation_counts_non_termination():
    install_extensions()
    nlp = spacy.blank("en")
    from kx_spacy.generation.corpus import pair_to_example

    egs = [pair_to_example(nlp, "a b", "x y"), pair_to_example(nlp, "c", "z")]
    egs[0].predicted._.kx_generation = {"text": "x y", "stopped_by": "eos"}
    egs[1].predicted._.kx_generation = {"text": "q q q", "stopped_by": "max_length"}
    scores = score_generation(egs)
    assert scores["gen_nonterm"] == 0.5 and scores["gen_exact"] == 0.5
