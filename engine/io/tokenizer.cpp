#include "engine/io/tokenizer.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>

#include "engine/io/files.h"
#include "engine/io/sentencepiece_tokenizer.h"

namespace moe {

namespace {

// Each byte a token: the text is the ids, and any byte string round-trips.
class BytesTokenizer : public Tokenizer {
public:
    BytesTokenizer() : Tokenizer(TokenizerIdentity{}) {}
    std::vector<int32_t> encode(const std::string& text) const override {
        return std::vector<int32_t>(reinterpret_cast<const unsigned char*>(text.data()),
                                    reinterpret_cast<const unsigned char*>(text.data()) + text.size());
    }
    std::string decode(const std::vector<int32_t>& ids) const override {
        std::string text(ids.size(), '\0');
        for (size_t i = 0; i < ids.size(); ++i) {
            if (ids[i] < 0 || ids[i] > 255)
                throw DataError("tokenizer bytes: token " + std::to_string(ids[i]) + " is not a byte (0..255)");
            text[i] = char(ids[i]);
        }
        return text;
    }
};

// Ids of a tokenizer the engine cannot run: their text is the ids themselves.
class IdsTokenizer : public Tokenizer {
public:
    IdsTokenizer() : Tokenizer(TokenizerIdentity{"none", "", 0, 0}) {}
    std::vector<int32_t> encode(const std::string& text) const override {
        std::vector<int32_t> ids;
        const char* at = text.c_str();
        for (char* end = nullptr;; at = end) {
            while (*at == ' ') ++at;
            if (!*at) break;
            errno = 0;
            const long id = std::strtol(at, &end, 10);
            if (end == at || (*end && *end != ' ') || errno || id < 0 || id > INT32_MAX)
                throw DataError("tokenizer none reads token ids in decimal separated by spaces, got '" + text + "'");
            ids.push_back(int32_t(id));
        }
        return ids;
    }
    std::string decode(const std::vector<int32_t>& ids) const override {
        std::string text;
        for (int32_t id : ids) text += (text.empty() ? "" : " ") + std::to_string(id);
        return text;
    }
};

}  // namespace

bool TokenizerIdentity::same_as(const TokenizerIdentity& o) const {
    return kind == o.kind && crc32c == o.crc32c && vocab == o.vocab;
}

std::string TokenizerIdentity::describe() const {
    if (kind == "none") return "none (ids made elsewhere)";
    if (kind == "bytes") return "bytes (256 tokens)";
    char crc[16];
    std::snprintf(crc, sizeof crc, "%08x", crc32c);
    return kind + " '" + file + "' (crc32c " + crc + ", " + std::to_string(vocab) + " tokens)";
}

std::string identity_yaml(const TokenizerIdentity& id) {
    char crc[16];
    std::snprintf(crc, sizeof crc, "%08x", id.crc32c);
    YAML::Emitter out;
    out << YAML::Flow << YAML::BeginMap << YAML::Key << "kind" << YAML::Value << id.kind << YAML::Key << "file"
        << YAML::Value << YAML::DoubleQuoted << id.file << YAML::Key << "crc32c" << YAML::Value << crc << YAML::Key
        << "vocab" << YAML::Value << id.vocab << YAML::EndMap;
    return out.c_str();
}

TokenizerIdentity identity_from_yaml(const std::string& text) {
    TokenizerIdentity id;
    try {
        const YAML::Node node = YAML::Load(text);
        id.kind = node["kind"].as<std::string>();
        id.file = node["file"].as<std::string>();
        const std::string crc = node["crc32c"].as<std::string>();
        char* end = nullptr;
        id.crc32c = uint32_t(std::strtoul(crc.c_str(), &end, 16));
        if (crc.size() != 8 || *end) throw DataError("crc32c '" + crc + "' is not 8 hex digits");
        id.vocab = node["vocab"].as<int>();
    } catch (const std::exception& e) {
        throw DataError("tokenizer record '" + text.substr(0, 200) + "' is malformed (" + e.what() + ")");
    }
    const bool known = (id.kind == "bytes" && id.vocab == 256) || (id.kind == "none" && id.vocab == 0) ||
                       (id.kind == "sentencepiece" && id.vocab > 0 && !id.file.empty());
    if (!known)
        throw DataError("tokenizer record '" + text.substr(0, 200) +
                        "' is malformed (kind bytes with vocab 256, sentencepiece with a file and a vocab, or none "
                        "with vocab 0)");
    return id;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
    if (spec == "bytes") return std::make_unique<BytesTokenizer>();
    if (spec == "none") return std::make_unique<IdsTokenizer>();
    return load_sentencepiece(spec);
}

std::unique_ptr<Tokenizer> load_recorded_tokenizer(const TokenizerIdentity& recorded, const std::string& path) {
    std::unique_ptr<Tokenizer> t = load_tokenizer(recorded.kind == "sentencepiece" ? path : recorded.kind);
    if (!t->identity().same_as(recorded))
        throw DataError("the tokenizer model '" + path + "' is " + t->identity().describe() + ", not the " +
                        recorded.describe() + " the weights were trained with: put that model file back");
    return t;
}

std::string TextStream::next(int32_t id) {
    ids_.push_back(id);
    const std::string text = tokenizer_.decode(ids_);
    static const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD: a character not yet whole
    size_t whole = text.size();
    while (whole >= emitted_ + kReplacement.size() &&
           text.compare(whole - kReplacement.size(), kReplacement.size(), kReplacement) == 0)
        whole -= kReplacement.size();
    if (whole <= emitted_) return "";
    const std::string out = text.substr(emitted_, whole - emitted_);
    emitted_ = whole;
    return out;
}

std::string TextStream::finish() {
    const std::string text = tokenizer_.decode(ids_);
    const std::string out = text.size() > emitted_ ? text.substr(emitted_) : "";
    emitted_ = text.size();
    return out;
}

}  // namespace moe
