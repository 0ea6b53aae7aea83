// Private: the streaming readers behind KeyManager::import_keys(): a byte source that
// drops a leading UTF-8 byte order mark, a JSON-lines line reader and a CSV record
// reader (RFC 4180 as PostgreSQL's COPY ... CSV writes it). Each keeps one record at a
// time, at most a given number of bytes of it, in a buffer it wipes (OPENSSL_cleanse)
// before reuse, when it grows and when it dies: rows hold digests.
// Thread-safety: none; one reader per thread. Ownership: borrows the streambuf, which
// must outlive the reader.
#ifndef APIKEYS_SRC_IMPORT_READER_HPP
#define APIKEYS_SRC_IMPORT_READER_HPP

#include <cstddef>
#include <cstdint>
#include <streambuf>
#include <string>
#include <string_view>
#include <vector>

namespace apikeys::detail {

// A string whose old bytes are wiped whenever it would free or reuse them.
class WipedBuffer {
 public:
  WipedBuffer() = default;
  ~WipedBuffer() { clear(); }
  WipedBuffer(const WipedBuffer&) = delete;
  WipedBuffer& operator=(const WipedBuffer&) = delete;

  void push_back(char c);
  // Wipes the bytes written and empties the buffer (its capacity stays).
  void clear() noexcept;
  [[nodiscard]] std::size_t size() const noexcept { return s_.size(); }
  [[nodiscard]] std::string_view view() const noexcept { return s_; }
  void pop_back() noexcept;

 private:
  std::string s_;
};

// Reads bytes from a streambuf, skipping a UTF-8 byte order mark at its very start.
class ByteSource {
 public:
  static constexpr int kEof = -1;
  explicit ByteSource(std::streambuf& in);
  // The next byte (0-255), or kEof.
  int get();
  // The next byte without consuming it, or kEof.
  int peek();
  // True when reading failed (std::filebuf throws on a read error): the input ended
  // there, and get() and peek() return kEof from then on.
  [[nodiscard]] bool failed() const noexcept { return failed_; }

 private:
  // in_.sbumpc() (consume) or in_.sgetc(), with a read error turned into kEof.
  int read(bool consume) noexcept;

  std::streambuf& in_;
  bool failed_ = false;
  unsigned char pending_[3] = {};  // bytes read ahead while looking for the mark
  std::size_t pending_begin_ = 0;
  std::size_t pending_end_ = 0;
};

// Splits the input into lines at "\n"; a "\r" before it is dropped.
class LineReader {
 public:
  LineReader(ByteSource& in, std::size_t max_bytes) : in_(in), max_(max_bytes) {}
  // Reads the next line; false at the end of the input. `too_long`: the line had more
  // than max_bytes bytes (the rest of it was read and dropped, line() holds nothing).
  bool next(bool& too_long);
  [[nodiscard]] std::string_view line() const noexcept { return buf_.view(); }
  // The line number of the line last read, from 1.
  [[nodiscard]] std::uint64_t line_number() const noexcept { return line_; }
  // Wipes the line last read.
  void clear() noexcept { buf_.clear(); }

 private:
  ByteSource& in_;
  std::size_t max_;
  WipedBuffer buf_;
  std::uint64_t line_ = 0;
};

// One field of a CSV record, as a span of the reader's buffer.
struct CsvField {
  std::size_t offset = 0;
  std::size_t size = 0;
  bool quoted = false;  // an unquoted empty field is NULL; a quoted one is ""
  [[nodiscard]] bool is_null() const noexcept { return !quoted && size == 0; }
};

// One CSV record: a row or the header.
struct CsvRecord {
  std::uint64_t line = 0;  // the line it starts on, from 1
  bool too_long = false;   // more than max_bytes bytes; fields is empty
  // A quote inside an unquoted field, text after a closing quote, or a quoted field
  // never closed. The record still ends where PostgreSQL would end it: every quote
  // toggles quoting, and a line break outside quotes ends the record.
  bool malformed = false;
  std::vector<CsvField> fields;
};

// Reads CSV records. A line break inside a quoted field is part of the field (and
// counts as a line); "\r\n" or "\n" outside quotes ends the record (a lone "\r" is
// data); a record with no bytes at all (an empty line) is skipped.
class CsvReader {
 public:
  CsvReader(ByteSource& in, std::size_t max_bytes) : in_(in), max_(max_bytes) {}
  // Reads the next record into `out`; false at the end of the input.
  bool next(CsvRecord& out);
  [[nodiscard]] std::string_view text(const CsvField& f) const noexcept {
    return buf_.view().substr(f.offset, f.size);
  }
  // Wipes the record last read.
  void clear() noexcept { buf_.clear(); }

 private:
  ByteSource& in_;
  std::size_t max_;
  WipedBuffer buf_;
  std::uint64_t line_ = 1;  // the line the next byte is on
};

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_IMPORT_READER_HPP
