#include "engine/io/sentencepiece_tokenizer.h"

#include "engine/io/files.h"

#if MOE_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>

#include <filesystem>
#include <string_view>

#include "engine/io/crc32c.h"
#endif

namespace moe {

#if MOE_HAVE_SENTENCEPIECE

namespace {

constexpr uint64_t kMaxModelBytes = 64 << 20;  // a model of 256k tokens is about 5 MiB

// A status as text, without the space SentencePiece ends some with.
std::string text_of(const sentencepiece::util::Status& status) {
    std::string text = status.ToString();
    while (!text.empty() && text.back() == ' ') text.pop_back();
    return text;
}

class SentencePieceTokenizer : public Tokenizer {
public:
    SentencePieceTokenizer(TokenizerIdentity identity, std::unique_ptr<sentencepiece::SentencePieceProcessor> sp)
        : Tokenizer(std::move(identity)), sp_(std::move(sp)) {}

    // A line at a time, as spm_encode does: pieces never span a newline (a
    // model learns from lines), and the memory used is that of one line.
    std::vector<int32_t> encode(const std::string& text) const override {
        std::vector<int32_t> ids;
        std::vector<int> line_ids;
        for (size_t at = 0; at < text.size();) {
            const size_t newline = text.find('\n', at);
            const size_t end = newline == std::string::npos ? text.size() : newline + 1;
            check(sp_->Encode(std::string_view(text).substr(at, end - at), &line_ids), "encode");
            ids.insert(ids.end(), line_ids.begin(), line_ids.end());
            at = end;
        }
        return ids;
    }

    std::string decode(const std::vector<int32_t>& ids) const override {
        for (int32_t id : ids)
            if (id < 0 || id >= vocab_size())
                throw DataError("tokenizer " + identity().describe() + ": token " + std::to_string(id) +
                                " is outside its vocabulary");
        std::string text;
        check(sp_->Decode(std::vector<int>(ids.begin(), ids.end()), &text), "decode");
        return text;
    }

private:
    void check(const sentencepiece::util::Status& status, const char* what) const {
        if (!status.ok())
            throw DataError("tokenizer " + identity().describe() + ": cannot " + what + " (" + text_of(status) + ")");
    }

    std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace

bool have_sentencepiece() { return true; }

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path) {
    std::string bytes;
    try {
        bytes = read_small_file(path, kMaxModelBytes);
    } catch (const DataError& e) {
        throw DataError(std::string("SentencePiece model ") + e.what());
    }
    auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
    const sentencepiece::util::Status status = sp->LoadFromSerializedProto(bytes);
    if (!status.ok())
        throw DataError("'" + path + "' is not a SentencePiece model (" + text_of(status) +
                        "): give the .model file spm_train writes (scripts/train_tokenizer.sh makes one)");
    TokenizerIdentity identity{"sentencepiece", std::filesystem::path(path).filename().string(),
                               crc32c(0, bytes.data(), bytes.size()), sp->GetPieceSize()};
    return std::make_unique<SentencePieceTokenizer>(std::move(identity), std::move(sp));
}

#else

bool have_sentencepiece() { return false; }

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path) {
    throw DataError("tokenizer '" + path + "' would be a SentencePiece model, but this build lacks SentencePiece: "
                    "install libsentencepiece-dev (scripts/setup.sh does) and build again");
}

#endif

}  // namespace moe
