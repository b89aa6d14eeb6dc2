// Built only where the build lacks SentencePiece: a model is refused with
// one line saying so and how to get it, wherever a tokenizer is asked for.
#include <string>

#include "engine/io/tokenizer.h"
#include "tests/catch.h"
#include "tests/test_util.h"

using namespace moe;

TEST_CASE("a SentencePiece model, in a build without SentencePiece, is refused with how to get it", "[unit]") {
    CHECK_FALSE(have_sentencepiece());
    const std::string expected = "tokenizer 'data/m.model' would be a SentencePiece model, but this build lacks "
                                 "SentencePiece: install libsentencepiece-dev (scripts/setup.sh does) and build again";
    CHECK(moe::test::error_of<DataError>([] { load_tokenizer("data/m.model"); }) == expected);
    const TokenizerIdentity recorded{"sentencepiece", "m.model", 0x1234abcd, 1024};
    CHECK(moe::test::error_of<DataError>([&] { load_recorded_tokenizer(recorded, "data/m.model"); }) == expected);
    CHECK(load_tokenizer("bytes")->vocab_size() == 256);  // the others are there
}
