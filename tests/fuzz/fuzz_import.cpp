// fuzz_import: KeyManager::import_keys() on arbitrary input, JSON lines when the first
// byte is even, CSV when it is odd, into a fresh MemoryStore. Never crashes, and:
//   1. imported + skipped + rejected is the number of rows, counted here independently
//      (JSON lines: lines with something other than space, tab or CR; CSV: records
//      after the header, where every quote toggles quoting and a line break outside
//      quotes ends a record, empty lines not counted);
//   2. the only exception is Error(invalid_argument), and only for CSV (no header, or
//      one without a required column);
//   3. rejections are listed in line order, from the first data line, and at most
//      max_rejections_listed of them;
//   4. a second run over the same input imports nothing, skips what the first imported
//      or skipped, and rejects what it rejected.
// Input: format byte, then the text.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "fuzz_support.hpp"

namespace {

constexpr std::string_view kLegacyPepper = "python-service-secret";

std::string_view drop_bom(std::string_view text) {
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  return text;
}

std::uint64_t json_rows(std::string_view text) {
  std::uint64_t rows = 0;
  while (!text.empty()) {
    const std::size_t end = text.find('\n');
    const std::string_view line = text.substr(0, end);
    if (line.find_first_not_of(" \t\r") != std::string_view::npos) ++rows;
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
  }
  return rows;
}

// Records, the header included.
std::uint64_t csv_records(std::string_view text) {
  std::uint64_t records = 0;
  bool quoted = false;
  std::size_t bytes = 0;  // of the current record, its line break excluded
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (!quoted && c == '\n') {
      if (bytes > 0) ++records;
      bytes = 0;
      continue;
    }
    if (!quoted && c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;
    if (c == '"') quoted = !quoted;
    ++bytes;
  }
  if (bytes > 0) ++records;
  return records;
}

struct Outcome {
  bool threw = false;
  apikeys::ImportReport report;
};

Outcome run(apikeys::KeyManager& manager, std::string_view text, apikeys::ImportFormat format) {
  std::istringstream in{std::string(text)};
  apikeys::ImportOptions options;
  options.format = format;
  options.max_rejections_listed = 4;
  Outcome out;
  try {
    out.report = manager.import_keys(in, options);
  } catch (const apikeys::Error& e) {
    FUZZ_CHECK(e.code() == apikeys::ErrorCode::invalid_argument);
    FUZZ_CHECK(format == apikeys::ImportFormat::csv);
    out.threw = true;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Reader reader(data, size);
  const bool csv = (reader.byte() & 1) != 0;
  const std::string_view text = reader.rest();
  const auto format = csv ? apikeys::ImportFormat::csv : apikeys::ImportFormat::json_lines;

  auto store = std::make_shared<apikeys::MemoryStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(
      std::vector<apikeys::Pepper>{{1, fuzz::kPepper}}, 1, kLegacyPepper);
  apikeys::KeyManager manager(store, hasher);

  const Outcome first = run(manager, text, format);
  if (first.threw) return 0;
  const apikeys::ImportReport& r = first.report;
  std::uint64_t rows = 0;
  if (csv) {
    const std::uint64_t records = csv_records(drop_bom(text));
    rows = records == 0 ? 0 : records - 1;
  } else {
    rows = json_rows(drop_bom(text));
  }
  FUZZ_CHECK(r.imported + r.skipped + r.rejected == rows);
  FUZZ_CHECK(r.rejections.size() <= 4);
  FUZZ_CHECK(r.rejections.size() == (r.rejected < 4 ? r.rejected : 4));
  std::uint64_t last = csv ? 2 : 1;
  for (const auto& rejection : r.rejections) {
    FUZZ_CHECK(rejection.line >= last);
    FUZZ_CHECK(!rejection.reason.empty());
    last = rejection.line + 1;  // every row ends with a line break
  }

  const Outcome second = run(manager, text, format);
  FUZZ_CHECK(!second.threw);
  FUZZ_CHECK(second.report.imported == 0);
  FUZZ_CHECK(second.report.skipped == r.imported + r.skipped);
  FUZZ_CHECK(second.report.rejected == r.rejected);
  return 0;
}
