// TempDir: a fresh, uniquely named directory under the system temp dir ($TMPDIR, else
// /tmp), for the tests and the benchmarks (which find this header on their include
// path). Header-only and free of test frameworks so both can use it.
// Thread-safety: path() and file() are const and may be called from any thread; the
// object itself belongs to one test. Ownership: the TempDir owns the directory and
// removes it, with everything in it, when it dies.
#ifndef APIKEYS_TESTS_TEMP_DIR_HPP
#define APIKEYS_TESTS_TEMP_DIR_HPP

#include <stdlib.h>  // mkdtemp (POSIX)

#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

namespace apikeys_test {

class TempDir {
 public:
  // Creates "<temp dir>/<prefix>-XXXXXX" (mode 0700). Throws std::runtime_error (or
  // std::filesystem::filesystem_error, when there is no temp dir) if it cannot.
  explicit TempDir(std::string_view prefix = "apikeys-test") {
    std::string pattern =
        (std::filesystem::temp_directory_path() / (std::string(prefix) + "-XXXXXX")).string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed for " + pattern);
    }
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;  // A destructor must not throw; a leftover dir is harmless.
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
  /// path() / name, as a string (e.g. a database file name).
  [[nodiscard]] std::string file(std::string_view name) const {
    return (path_ / std::filesystem::path(name)).string();
  }

 private:
  std::filesystem::path path_;
};

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_TEMP_DIR_HPP
