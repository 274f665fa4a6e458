"""CoNLL-U and SIGHAN readers."""
import pytest
import spacy
from spacy.util import registry

from kx_spacy.errors import DataFormatError, KxError
from kx_spacy.readers import read_conllu, read_sighan, read_word_list

CONLLU = """# newdoc id = x
# sent_id = s1
# text = I didn't go.
1	I	I	PRON	PRP	_	3	nsubj	_	_
2-3	didn't	_	_	_	_	_	_	_	_
2	did	do	AUX	VBD	_	4	aux	_	_
3	n't	not	PART	RB	_	4	advmod	_	_
4	go	go	VERB	VB	_	0	root	_	SpaceAfter=No
4.1	went	go	VERB	VB	_	_	_	4:conj	_
5	.	.	PUNCT	.	_	4	punct	_	_

# sent_id = s2
# text = Yes !
1	Yes	yes	INTJ	UH	_	0	root	_	_
2	!	!	PUNCT	.	_	1	punct	_	_
"""
# note: the first sentence's heads are deliberately written for words 1..5 after skipping


@pytest.fixture
def conllu_file(tmp_path):
    text = CONLLU.replace("1\tI\tI\tPRON\tPRP\t_\t3", "1\tI\tI\tPRON\tPRP\t_\t4")
    path = tmp_path / "x.conllu"
    path.write_text(text, encoding="utf8")
    return path


def test_read_conllu(conllu_file):
    sents = read_conllu(conllu_file)
    assert len(sents) == 2
    a, b = sents
    assert a.words == ["I", "did", "n't", "go", "."]
    assert a.heads == [4, 4, 4, 0, 4]
    assert a.deprels[3] == "root" and a.upos[4] == "PUNCT"
    assert a.spaces == [True, True, True, False, True]
    assert a.sent_id == "s1" and a.text == "I didn't go."
    assert a.root == 4 and a.n_non_punct() == 4
    assert b.words == ["Yes", "!"] and b.heads == [0, 1]


def test_filters(conllu_file):
    assert len(read_conllu(conllu_file, limit=1)) == 1
    # "Yes !" has 1 non-punct word, the first sentence 4
    assert [s.sent_id for s in read_conllu(conllu_file, max_words=1)] == ["s2"]
    assert [s.sent_id for s in read_conllu(conllu_file, max_words=4)] == ["s1", "s2"]
    assert [s.sent_id for s in read_conllu(conllu_file, max_words=4, count_punct=True)] == ["s2"]


def test_crlf_and_bom(tmp_path, conllu_file):
    path = tmp_path / "crlf.conllu"
    path.write_bytes(b"\xef\xbb\xbf" + conllu_file.read_text(encoding="utf8").replace("\n", "\r\n").encode("utf8"))
    assert [s.words for s in read_conllu(path)] == [s.words for s in read_conllu(conllu_file)]


@pytest.mark.parametrize(
    "body",
    [
        "1\tA\ta\tX\tX\t_\t0\troot\t_\n",  # 9 columns
        "1\tA\ta\tX\tX\t_\t0\troot\t_\t_\n2\tB\tb\tX\tX\t_\t7\tdep\t_\t_\n",  # head out of range
        "2\tA\ta\tX\tX\t_\t0\troot\t_\t_\n",  # ids out of order
        "1\tA\ta\tX\tX\t_\t_\troot\t_\t_\n",  # non-integer head
    ],
)
def test_bad_conllu(tmp_path, body):
    path = tmp_path / "bad.conllu"
    path.write_text(body, encoding="utf8")
    with pytest.raises(DataFormatError):
        read_conllu(path)


def test_missing_file(tmp_path):
    with pytest.raises(KxError, match="No such file"):
        read_conllu(tmp_path / "nope.conllu")
    with pytest.raises(KxError):
        read_sighan(tmp_path / "nope.utf8")


def test_registered_corpus(conllu_file):
    nlp = spacy.blank("en")
    corpus = registry.readers.get("kx_spacy.ConlluCorpus.v1")(path=str(conllu_file))
    examples = list(corpus(nlp))
    assert len(examples) == 2
    ref = examples[0].reference
    assert [t.text for t in ref] == ["I", "did", "n't", "go", "."]
    assert [t.head.i for t in ref] == [3, 3, 3, 3, 3]
    assert ref[3].dep_ == "ROOT" and ref[4].pos_ == "PUNCT"
    assert ref.text == "I did n't go."
    assert not examples[0].predicted.has_annotation("DEP")
    # nlp.evaluate runs with the kx scorer over these examples
    scores = nlp.evaluate(examples, scorer_cfg=None)
    assert isinstance(scores, dict)


def test_read_sighan(tmp_path):
    gold = tmp_path / "gold.utf8"
    gold.write_bytes("共同  创造  美好\u3000的  新  世纪\r\n\r\n2001年  新年 \r\n".encode("utf8"))
    assert read_sighan(gold) == [["共同", "创造", "美好", "的", "新", "世纪"], [], ["2001年", "新年"]]
    raw = tmp_path / "raw.utf8"
    raw.write_bytes("共同创造 美好的新世纪\r\n\r\n2001年新年\r\n".encode("utf8"))
    assert read_sighan(raw, segmented=False) == ["共同创造美好的新世纪", "", "2001年新年"]
    words = tmp_path / "words.utf8"
    words.write_text("共同\n创造\n\n美好 \n", encoding="utf8")
    assert read_word_list(words) == {"共同", "创造", "美好"}


def test_not_utf8(tmp_path):
    path = tmp_path / "gbk.utf8"
    path.write_bytes("共同".encode("gbk"))
    with pytest.raises(DataFormatError):
        read_sighan(path)
