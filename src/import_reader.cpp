#include "import_reader.hpp"

#include <openssl/crypto.h>

#include <algorithm>
#include <utility>

namespace apikeys::detail {

void WipedBuffer::push_back(char c) {
  if (s_.size() == s_.capacity()) {
    // Grow by hand: std::string would free the old block without wiping it.
    std::string bigger;
    bigger.reserve(std::max<std::size_t>(2 * s_.capacity(), 64));
    bigger.assign(s_);
    OPENSSL_cleanse(s_.data(), s_.size());
    s_.swap(bigger);
  }
  s_.push_back(c);
}

void WipedBuffer::clear() noexcept {
  OPENSSL_cleanse(s_.data(), s_.size());
  s_.clear();
}

void WipedBuffer::pop_back() noexcept {
  if (s_.empty()) return;
  OPENSSL_cleanse(&s_.back(), 1);
  s_.pop_back();
}

ByteSource::ByteSource(std::streambuf& in) : in_(in) {
  static constexpr unsigned char kMark[3] = {0xEF, 0xBB, 0xBF};
  // Consume only bytes that match the mark so far; a partial match is replayed.
  while (pending_end_ < 3) {
    const int c = read(/*consume=*/false);
    if (c == kEof || static_cast<unsigned char>(c) != kMark[pending_end_]) break;
    pending_[pending_end_++] = static_cast<unsigned char>(c);
    read(/*consume=*/true);
  }
  if (pending_end_ == 3) pending_end_ = 0;  // the whole mark: drop it
}

int ByteSource::read(bool consume) noexcept {
  if (failed_) return kEof;
  try {
    const int c = consume ? in_.sbumpc() : in_.sgetc();
    return c == std::streambuf::traits_type::eof() ? kEof : static_cast<unsigned char>(c);
  } catch (...) {
    failed_ = true;
    return kEof;
  }
}

int ByteSource::get() {
  if (pending_begin_ < pending_end_) return pending_[pending_begin_++];
  return read(/*consume=*/true);
}

int ByteSource::peek() {
  if (pending_begin_ < pending_end_) return pending_[pending_begin_];
  return read(/*consume=*/false);
}

bool LineReader::next(bool& too_long) {
  buf_.clear();
  too_long = false;
  std::size_t n = 0;
  bool any = false;
  for (;;) {
    const int c = in_.get();
    if (c == ByteSource::kEof) {
      if (!any) return false;
      break;
    }
    any = true;
    if (c == '\n') break;
    if (++n > max_) {
      if (!too_long) buf_.clear();
      too_long = true;
      continue;  // read on to the end of the line, keeping nothing
    }
    buf_.push_back(static_cast<char>(c));
  }
  ++line_;
  if (!too_long && buf_.size() > 0 && buf_.view().back() == '\r') buf_.pop_back();
  return true;
}

bool CsvReader::next(CsvRecord& out) {
  enum class State { field_start, unquoted, quoted, after_quote };
  for (;;) {
    buf_.clear();
    out.fields.clear();
    out.too_long = false;
    out.malformed = false;
    out.line = line_;
    State st = State::field_start;
    std::size_t consumed = 0;  // bytes of the record, its line break excluded
    bool line_break = false;
    CsvField field;
    auto store = [&](char c) {
      if (!out.too_long) buf_.push_back(c);
    };
    auto finish = [&] {
      if (!out.too_long) {
        field.size = buf_.size() - field.offset;
        out.fields.push_back(field);
      }
      field = CsvField{};
      field.offset = buf_.size();
    };
    for (;;) {
      const int c = in_.get();
      if (c == ByteSource::kEof) break;
      if (st != State::quoted) {
        if (c == '\n' || (c == '\r' && in_.peek() == '\n')) {
          if (c == '\r') in_.get();
          ++line_;
          line_break = true;
          break;
        }
      }
      if (++consumed > max_ && !out.too_long) {
        out.too_long = true;
        buf_.clear();
        out.fields.clear();
      }
      const char ch = static_cast<char>(c);
      switch (st) {
        case State::field_start:
          if (ch == '"') {
            field.quoted = true;
            st = State::quoted;
          } else if (ch == ',') {
            finish();
          } else {
            store(ch);
            st = State::unquoted;
          }
          break;
        case State::unquoted:
          if (ch == ',') {
            finish();
            st = State::field_start;
          } else if (ch == '"') {
            out.malformed = true;  // a quote inside an unquoted field
            st = State::quoted;
          } else {
            store(ch);
          }
          break;
        case State::quoted:
          if (ch == '"') {
            st = State::after_quote;
          } else {
            if (ch == '\n') ++line_;
            store(ch);
          }
          break;
        case State::after_quote:
          if (ch == '"') {  // a doubled quote
            store('"');
            st = State::quoted;
          } else if (ch == ',') {
            finish();
            st = State::field_start;
          } else {
            out.malformed = true;  // text after a closing quote
            store(ch);
            st = State::unquoted;
          }
          break;
      }
    }
    if (consumed == 0) {
      if (line_break) continue;  // an empty line
      return false;              // the end of the input
    }
    if (st == State::quoted) out.malformed = true;  // never closed
    finish();
    if (out.too_long) out.fields.clear();
    return true;
  }
}

}  // namespace apikeys::detail
