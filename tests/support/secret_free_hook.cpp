// A free() hook for the CLI tests, loaded into the CLI with LD_PRELOAD: every block
// handed back to the allocator (free, and so operator delete; the old block of a realloc
// that moves or shrinks) is searched, before it is released, for a secret key ("sk_" and
// 32 base62 characters) and for the text in APIKEYS_FREE_HOOK_PEPPER (the pepper's hex).
// Each find appends a line to the file named by APIKEYS_FREE_HOOK_REPORT; the first line
// says the hook is loaded and the last how many blocks it searched, so a test can tell
// "searched, clean" from "never loaded".
// Thread-safety: the hooks may run on any thread at once; they keep no state but an
// atomic counter. They allocate nothing (a free() that allocated could recurse): only
// system calls and fixed buffers. glibc only (__libc_free, __libc_realloc).

#include <dlfcn.h>
#include <execinfo.h>
#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>

extern "C" {
void __libc_free(void* p);
void* __libc_realloc(void* p, std::size_t n);
}

namespace {

constexpr std::size_t kSecretBodyChars = 32;
constexpr std::size_t kMaxPepperHex = 1024;

char g_report[4096];                   // path of the report file; empty: report nowhere
char g_pepper_hex[kMaxPepperHex + 1];  // what else to look for; empty: only secrets
std::size_t g_pepper_len = 0;
std::atomic<unsigned long> g_searched{0};

bool is_base62(unsigned char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// Copies the environment variable `name` into `out` (up to cap - 1 bytes).
std::size_t copy_env(const char* name, char* out, std::size_t cap) noexcept {
  const char* v = std::getenv(name);
  std::size_t n = 0;
  if (v != nullptr) {
    while (v[n] != '\0' && n + 1 < cap) {
      out[n] = v[n];
      ++n;
    }
  }
  out[n] = '\0';
  return n;
}

void append_report(const char* text, std::size_t n) noexcept {
  if (g_report[0] == '\0') return;
  const int fd = ::open(g_report, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return;
  while (n > 0) {
    const ssize_t w = ::write(fd, text, n);
    if (w <= 0) break;
    text += w;
    n -= static_cast<std::size_t>(w);
  }
  ::close(fd);
}

// Appends `v` in base `base` (10 or 16) to buf at *at.
void put_number(char* buf, std::size_t* at, unsigned long v, unsigned base = 10) noexcept {
  char digits[24];
  std::size_t n = 0;
  do {
    digits[n++] = "0123456789abcdef"[v % base];
    v /= base;
  } while (v != 0);
  if (base == 16) {
    buf[(*at)++] = '0';
    buf[(*at)++] = 'x';
  }
  while (n > 0) buf[(*at)++] = digits[--n];
}

// Appends `s`, truncated so that buf[0, cap) is never overrun.
void put_text(char* buf, std::size_t* at, const char* s, std::size_t cap = 160) noexcept {
  while (*s != '\0' && *at < cap) buf[(*at)++] = *s++;
}

// What `bytes` holds that it must not (nullptr: nothing).
const char* find_secret(const unsigned char* bytes, std::size_t n) noexcept {
  if (g_pepper_len > 0 && n >= g_pepper_len &&
      ::memmem(bytes, n, g_pepper_hex, g_pepper_len) != nullptr) {
    return "the pepper (hex)";
  }
  const std::size_t key_len = 3 + kSecretBodyChars;
  for (std::size_t i = 0; i + key_len <= n; ++i) {
    if (bytes[i] != 's' || bytes[i + 1] != 'k' || bytes[i + 2] != '_') continue;
    std::size_t run = 0;
    while (run < kSecretBodyChars && is_base62(bytes[i + 3 + run])) ++run;
    if (run == kSecretBodyChars) return "a secret key";
  }
  return nullptr;
}

// One line for the find, then one per stack frame as "module+offset" (for addr2line).
void report(const char* what, std::size_t block_size) noexcept {
  char line[256];
  std::size_t at = 0;
  put_text(line, &at, "freed block of ");
  put_number(line, &at, block_size);
  put_text(line, &at, " bytes held ");
  put_text(line, &at, what);
  put_text(line, &at, ", freed at:\n");
  append_report(line, at);
  void* frames[24];
  const int depth = ::backtrace(frames, 24);
  for (int i = 1; i < depth; ++i) {  // frame 0 is report() itself
    Dl_info info{};
    at = 0;
    put_text(line, &at, "  ");
    const auto pc = reinterpret_cast<unsigned long>(frames[i]);
    if (::dladdr(frames[i], &info) != 0 && info.dli_fname != nullptr) {
      put_text(line, &at, info.dli_fname);
      put_text(line, &at, "+", 200);
      put_number(line, &at, pc - reinterpret_cast<unsigned long>(info.dli_fbase), 16);
    } else {
      put_number(line, &at, pc, 16);
    }
    line[at++] = '\n';
    append_report(line, at);
  }
}

__attribute__((constructor)) void hook_start() {
  copy_env("APIKEYS_FREE_HOOK_REPORT", g_report, sizeof g_report);
  g_pepper_len = copy_env("APIKEYS_FREE_HOOK_PEPPER", g_pepper_hex, sizeof g_pepper_hex);
  // backtrace() loads its unwinder (and allocates) on first use: do that now, not in free().
  void* frame[1];
  (void)::backtrace(frame, 1);
  static const char kLoaded[] = "free hook loaded\n";
  append_report(kLoaded, sizeof kLoaded - 1);
}

__attribute__((destructor)) void hook_stop() {
  char line[96];
  std::size_t at = 0;
  put_text(line, &at, "searched ");
  put_number(line, &at, g_searched.load());
  put_text(line, &at, " freed blocks\n");
  append_report(line, at);
}

}  // namespace

extern "C" {

void free(void* p) {
  if (p != nullptr) {
    const std::size_t n = ::malloc_usable_size(p);
    g_searched.fetch_add(1, std::memory_order_relaxed);
    if (const char* what = find_secret(static_cast<const unsigned char*>(p), n)) {
      report(what, n);
    }
  }
  __libc_free(p);
}

void cfree(void* p) { free(p); }

// The old block is searched before the call (afterwards it may be gone) and reported
// only if realloc released it: moved, freed (n == 0), or shrunk in place (its tail).
void* realloc(void* p, std::size_t n) {
  if (p == nullptr) return __libc_realloc(p, n);
  const std::size_t old_size = ::malloc_usable_size(p);
  const auto* bytes = static_cast<const unsigned char*>(p);
  const char* whole = find_secret(bytes, old_size);
  const char* tail = n < old_size ? find_secret(bytes + n, old_size - n) : nullptr;
  void* q = __libc_realloc(p, n);
  if (q != p && (q != nullptr || n == 0)) {
    g_searched.fetch_add(1, std::memory_order_relaxed);
    if (whole != nullptr) report(whole, old_size);
  } else if (q == p && tail != nullptr) {
    report(tail, old_size - n);
  }
  return q;
}

}  // extern "C"
