// PostgresStore: a bounded pool of libpq connections, each with its statements
// prepared once; every wait bounded by a client-side deadline (pg_connection.hpp);
// the schema created and migrated under an advisory lock; writes as single atomic
// statements (a revoke bumps the revision in the same statement).
#include "apikeys/postgres_store.hpp"

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <poll.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "hex.hpp"
#include "pg_connection.hpp"
#include "wipe.hpp"

namespace apikeys {
namespace pg {

namespace {

// Waits until the connection's socket is ready (read or write) or the deadline passes.
bool wait_socket(PGconn* conn, bool for_write, Deadline deadline) {
  const int fd = PQsocket(conn);
  if (fd < 0) return false;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
    if (left.count() <= 0) return false;
    pollfd p{};
    p.fd = fd;
    p.events = static_cast<short>(for_write ? POLLOUT : POLLIN);
    const int r = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 60'000)));
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return false;
  }
}

// SQLSTATEs meaning "the same call may succeed later".
bool transient(std::string_view state) {
  return state.substr(0, 2) == "08" ||  // connection exception
         state == "57P01" || state == "57P02" || state == "57P03" ||  // shutdown, starting
         state == "57014" ||                                          // statement timeout
         state == "55P03" ||                                          // lock not available
         state == "40001" || state == "40P01" ||  // serialization failure, deadlock
         state == "53300";                        // too many connections
}

std::string first_line(const char* text) {
  std::string s = text ? text : "";
  const auto nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  return s;
}

bool mentions(std::string_view text, std::initializer_list<std::string_view> words) {
  return std::any_of(words.begin(), words.end(),
                     [&](std::string_view w) { return text.find(w) != std::string_view::npos; });
}

// What a failed connection attempt is reported as: fixed text, one per kind of failure,
// told apart by libpq's and the server's (English) wording. Their text itself is never
// passed on: it quotes host names, ports, user and database names, file paths and bad
// option values, which are pieces of the password when a string was mis-encoded (an
// unescaped '/' or '@' in a URI's password moves the rest of it into the port or the
// host). Wording we do not recognise (another libpq, translated messages) gets the last,
// generic kind.
const char* connect_failure(const char* libpq_message) {
  const std::string_view m = libpq_message != nullptr ? libpq_message : "";
  if (mentions(m, {"password", "authentication", "SCRAM", "SASL"})) {
    return "authentication failed (check the user name and password)";
  }
  if (mentions(m, {"pg_hba.conf"})) return "the server does not accept this host, user and database (pg_hba.conf)";
  if (mentions(m, {"does not exist"})) return "the user (role) or the database does not exist";
  if (mentions(m, {"too many", "starting up", "shutting down", "recovery", "not accepting"})) {
    return "the server is not accepting connections now (starting, stopping, or too many connections)";
  }
  if (mentions(m, {"timeout expired"})) return "timed out (connect_timeout)";
  if (mentions(m, {"SSL", "certificate", "GSS"})) return "TLS or GSSAPI negotiation failed";
  if (mentions(m, {"invalid", "could not match"})) {
    return "a connection option has an invalid value (a port, sslmode or other setting)";
  }
  if (mentions(m, {"refused", "could not translate host name", "No route", "unreachable", "No such file",
                   "closed the connection", "reset by peer", "could not connect", "could not send",
                   "could not receive"})) {
    return "cannot reach the server (refused, unknown host, or a network error)";
  }
  if (mentions(m, {"out of memory"})) return "out of memory";
  return "the server or libpq refused the connection (libpq's reason is withheld: it can quote the "
         "connection string)";
}

}  // namespace

void check_conninfo(const std::string& conninfo) {
  char* err = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(conninfo.c_str(), &err);
  // The reason quotes the offending token, often the password itself: wipe it unread.
  if (err != nullptr) {
    OPENSSL_cleanse(err, std::strlen(err));
    PQfreemem(err);
  }
  if (parsed == nullptr) {
    throw Error(ErrorCode::invalid_argument,
                "PostgresStore: malformed connection string (check quoting and percent-encoding)");
  }
  for (PQconninfoOption* o = parsed; o->keyword != nullptr; ++o) {
    if (o->val != nullptr) OPENSSL_cleanse(o->val, std::strlen(o->val));
  }
  PQconninfoFree(parsed);
}

PgConnection::PgConnection(const std::string& conninfo, Deadline deadline) {
  // The caller's string is expanded in place of dbname; the keywords after it
  // override it (UTF-8 is what we send), fallback_application_name only fills a gap.
  const char* keywords[] = {"dbname", "client_encoding", "fallback_application_name", nullptr};
  const char* values[] = {conninfo.c_str(), "UTF8", "apikeys", nullptr};
  conn_ = PQconnectStartParams(keywords, values, 1);
  if (conn_ == nullptr) throw ConnectionLost("PostgresStore connect failed: out of memory", false);
  if (PQstatus(conn_) == CONNECTION_BAD) connect_failed(false);
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  while (st != PGRES_POLLING_OK) {
    if (st == PGRES_POLLING_FAILED) connect_failed(false);
    if (!wait_socket(conn_, st == PGRES_POLLING_WRITING, deadline)) connect_failed(true);
    st = PQconnectPoll(conn_);
  }
  if (PQsetnonblocking(conn_, 1) != 0) connect_failed(false);
  // libpq prints server NOTICEs ("schema already exists, skipping") on stderr by
  // default: a library must not write into its host's logs.
  PQsetNoticeProcessor(conn_, [](void*, const char*) {}, nullptr);
}

PgConnection::~PgConnection() {
  if (conn_ != nullptr) PQfinish(conn_);
}

void PgConnection::connect_failed(bool timed_out) {
  const char* what = timed_out ? "timed out" : connect_failure(PQerrorMessage(conn_));
  // Called from the constructor, so the destructor will not run: close the socket and
  // free the PGconn here (PQfinish also wipes libpq's copy of the password).
  PQfinish(conn_);
  conn_ = nullptr;
  throw ConnectionLost(std::string("PostgresStore connect failed: ") + what, timed_out);
}

void PgConnection::lost(std::string_view op, const char* what, bool timed_out) {
  // Only once connected: libpq's messages about an open connection (it closed, a
  // send or receive failed) and the server's quote no value of the connection string.
  throw ConnectionLost(fmt::format("PostgresStore {} failed: {}", op,
                                   what && *what ? first_line(what) : "connection lost"),
                       timed_out);
}

bool PgConnection::healthy() noexcept {
  if (PQstatus(conn_) != CONNECTION_OK) return false;
  pollfd p{};
  p.fd = PQsocket(conn_);
  if (p.fd < 0) return false;
  p.events = POLLIN;
  if (::poll(&p, 1, 0) <= 0) return true;  // nothing pending: as it was
  // Something arrived while idle: a notice, or the server saying goodbye and closing.
  if (PQconsumeInput(conn_) == 0) return false;
  if ((p.revents & (POLLHUP | POLLERR)) != 0) return false;
  return PQstatus(conn_) == CONNECTION_OK && PQisBusy(conn_) == 0;
}

PgResult PgConnection::collect(std::string_view op, Deadline deadline) {
  // Push out what libpq buffered (non-blocking mode): the server may be slow to read.
  for (;;) {
    const int f = PQflush(conn_);
    if (f == 0) break;
    if (f < 0) lost(op, PQerrorMessage(conn_), false);
    if (!wait_socket(conn_, true, deadline)) lost(op, "timed out", true);
  }
  PgResult keep;
  for (;;) {
    while (PQisBusy(conn_) != 0) {
      if (!wait_socket(conn_, false, deadline)) lost(op, "timed out", true);
      if (PQconsumeInput(conn_) == 0) lost(op, PQerrorMessage(conn_), false);
    }
    PgResult r(PQgetResult(conn_));
    if (!r) break;
    // Keep the first error, else the last result (a simple query returns several).
    const bool kept_error = keep && PQresultStatus(keep.get()) == PGRES_FATAL_ERROR;
    if (!kept_error) keep = std::move(r);
  }
  if (!keep) lost(op, PQerrorMessage(conn_), false);
  const ExecStatusType status = PQresultStatus(keep.get());
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return keep;
  const char* state_c = PQresultErrorField(keep.get(), PG_DIAG_SQLSTATE);
  const std::string state = state_c ? state_c : "";
  // The primary message only: DETAIL may quote values (a duplicate key's value).
  const char* primary = PQresultErrorField(keep.get(), PG_DIAG_MESSAGE_PRIMARY);
  const std::string message = primary ? primary : first_line(PQresultErrorMessage(keep.get()));
  if (PQstatus(conn_) != CONNECTION_OK || state.empty() || state.substr(0, 2) == "08" ||
      state == "57P01" || state == "57P02") {
    lost(op, message.c_str(), false);
  }
  ErrorCode code = ErrorCode::storage;
  if (state == "23505") {
    code = ErrorCode::already_exists;
  } else if (transient(state)) {
    code = ErrorCode::busy;
  }
  throw Error(code, fmt::format("PostgresStore {} failed: {} (SQLSTATE {})", op, message, state));
}

PgResult PgConnection::exec(std::string_view op, const std::string& sql, Deadline deadline) {
  if (PQsendQuery(conn_, sql.c_str()) == 0) lost(op, PQerrorMessage(conn_), false);
  return collect(op, deadline);
}

PgResult PgConnection::exec_params(std::string_view op, const std::string& sql, int n,
                                   const char* const* values, const int* lengths,
                                   const int* formats, Deadline deadline) {
  if (PQsendQueryParams(conn_, sql.c_str(), n, nullptr, values, lengths, formats, 0) == 0) {
    lost(op, PQerrorMessage(conn_), false);
  }
  return collect(op, deadline);
}

void PgConnection::prepare(std::string_view op, const char* name, const std::string& sql,
                           Deadline deadline) {
  if (PQsendPrepare(conn_, name, sql.c_str(), 0, nullptr) == 0) lost(op, PQerrorMessage(conn_), false);
  (void)collect(op, deadline);
}

PgResult PgConnection::exec_prepared(std::string_view op, const char* name, int n,
                                     const char* const* values, const int* lengths,
                                     const int* formats, Deadline deadline) {
  if (PQsendQueryPrepared(conn_, name, n, values, lengths, formats, 0) == 0) {
    lost(op, PQerrorMessage(conn_), false);
  }
  return collect(op, deadline);
}

}  // namespace pg

namespace {

using pg::Deadline;
using pg::PgConnection;
using pg::PgResult;
using pg::SteadyClock;

// ---------------------------------------------------------------------------------
// Schema. Each step moves the tables from version `to - 1` to `to`; steps are
// append-only (a released step is never edited). `{s}` is the quoted schema name.

struct Migration {
  int to;
  const char* sql;
};

constexpr Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE {s}.apikeys_keys (
  key_id       uuid     NOT NULL PRIMARY KEY,
  account_id   uuid     NOT NULL,
  public_key   text     NOT NULL UNIQUE,
  digest       bytea    NOT NULL CHECK (length(digest) = 32),
  pepper_id    bigint   NOT NULL CHECK (pepper_id BETWEEN 0 AND 4294967295),
  title        text     NOT NULL,
  description  text     NOT NULL,
  status       smallint NOT NULL CHECK (status IN (0, 1)),
  created_at   bigint   NOT NULL,
  expires_at   bigint,
  last_used_at bigint,
  seq          bigint   GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX apikeys_keys_account_created
  ON {s}.apikeys_keys (account_id, created_at DESC, seq DESC);
CREATE TABLE {s}.apikeys_meta (
  id       integer NOT NULL PRIMARY KEY CHECK (id = 1),
  revision bigint  NOT NULL
);
INSERT INTO {s}.apikeys_meta (id, revision) VALUES (1, 0);
)sql"},
    {2, R"sql(
CREATE TABLE {s}.apikeys_changes (
  revision   bigint NOT NULL PRIMARY KEY,
  public_key text   NOT NULL
);
)sql"},
};

// How many revokes and deletes the change log keeps (doc/revocation.md).
constexpr auto kChangeLogSize = static_cast<std::int64_t>(PostgresStore::kChangeLogSize);

constexpr int kCurrentVersion = kMigrations[std::size(kMigrations) - 1].to;

// Times are Unix milliseconds (bigint): exact, the precision every store keeps.
constexpr const char* kInfoColumns =
    "key_id, account_id, public_key, title, description, status, created_at, expires_at, "
    "last_used_at";
constexpr int kInfoColumnCount = 9;

std::string replace_schema(std::string sql, const std::string& quoted) {
  for (std::size_t at = sql.find("{s}"); at != std::string::npos; at = sql.find("{s}", at)) {
    sql.replace(at, 3, quoted);
    at += quoted.size();
  }
  return sql;
}

struct Statements {
  std::string find, list, insert, set_status, remove, last_use, revision, changes;

  explicit Statements(const std::string& s)
      : find(fmt::format(
            "SELECT {}, digest, pepper_id FROM {}.apikeys_keys WHERE public_key = $1",
            kInfoColumns, s)),
        list(fmt::format("SELECT {} FROM {}.apikeys_keys WHERE account_id = $1"
                         " ORDER BY created_at DESC, seq DESC", kInfoColumns, s)),
        insert(fmt::format(
            "INSERT INTO {}.apikeys_keys (key_id, account_id, public_key, digest, pepper_id, title,"
            " description, status, created_at, expires_at, last_used_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)", s)),
        // One statement, one transaction: the bump and its change-log row are written
        // (once, to completion) whether or not the outer query reads them, and only
        // when a row changed. The bump's row lock orders concurrent writers, so
        // revisions commit in order and the log has no gap a reader could see.
        set_status(fmt::format(
            "WITH changed AS (UPDATE {0}.apikeys_keys SET status = $1 WHERE key_id = $2 AND"
            " account_id = $3 RETURNING {1}),{2}"
            " SELECT {1} FROM changed", s, kInfoColumns, log_change(s, "changed"))),
        remove(fmt::format(
            "WITH gone AS (DELETE FROM {0}.apikeys_keys WHERE key_id = $1 AND account_id = $2"
            " RETURNING {1}),{2}"
            " SELECT {1} FROM gone", s, kInfoColumns, log_change(s, "gone"))),
        // GREATEST ignores NULL: "never used" loses to any time. Duplicates in the batch
        // are folded first (an UPDATE ... FROM with two matches would pick either).
        last_use(fmt::format(
            "UPDATE {}.apikeys_keys k SET last_used_at = GREATEST(k.last_used_at, u.at)"
            " FROM (SELECT id, max(at) AS at FROM unnest($1::uuid[], $2::bigint[]) AS t(id, at)"
            " GROUP BY id) u WHERE k.key_id = u.id", s)),
        revision(fmt::format("SELECT revision FROM {}.apikeys_meta WHERE id = 1", s)),
        // One statement, one snapshot: the revision and the log rows up to it agree.
        changes(fmt::format(
            "SELECT m.revision, c.revision, c.public_key FROM {0}.apikeys_meta m"
            " LEFT JOIN {0}.apikeys_changes c ON c.revision > $1 AND c.revision <= m.revision"
            " WHERE m.id = 1 ORDER BY c.revision", s)) {}

  // The CTEs that bump the revision and log the key of the `source` CTE's row.
  static std::string log_change(const std::string& s, const char* source) {
    return fmt::format(
        " bump AS (UPDATE {0}.apikeys_meta SET revision = revision + 1 WHERE id = 1 AND"
        " EXISTS (SELECT 1 FROM {1}) RETURNING revision),"
        " logged AS (INSERT INTO {0}.apikeys_changes (revision, public_key)"
        " SELECT bump.revision, {1}.public_key FROM bump, {1}"
        " ON CONFLICT (revision) DO UPDATE SET public_key = EXCLUDED.public_key),"
        " pruned AS (DELETE FROM {0}.apikeys_changes"
        " WHERE revision <= (SELECT revision FROM bump) - {2})",
        s, source, kChangeLogSize);
  }
};

// Prepared statement names (per connection).
constexpr const char* kFind = "apikeys_find";
constexpr const char* kList = "apikeys_list";
constexpr const char* kInsert = "apikeys_insert";
constexpr const char* kSetStatus = "apikeys_set_status";
constexpr const char* kRemove = "apikeys_remove";
constexpr const char* kLastUse = "apikeys_last_use";
constexpr const char* kRevision = "apikeys_revision";
constexpr const char* kChanges = "apikeys_changes";

[[noreturn]] void corrupt(std::string_view op, const char* what) {
  throw Error(ErrorCode::storage, fmt::format("PostgresStore {} failed: corrupt record: {}", op, what));
}

std::int64_t parse_int(const PGresult* r, int row, int col, std::string_view op, const char* what) {
  if (PQgetisnull(r, row, col)) corrupt(op, what);
  const char* s = PQgetvalue(r, row, col);
  const char* end = s + std::strlen(s);
  std::int64_t v = 0;
  const auto [p, ec] = std::from_chars(s, end, v);
  if (ec != std::errc() || p != end) corrupt(op, what);
  return v;
}

std::optional<TimePoint> parse_optional_time(const PGresult* r, int row, int col,
                                             std::string_view op, const char* what) {
  if (PQgetisnull(r, row, col)) return std::nullopt;
  return from_unix_millis(parse_int(r, row, col, op, what));
}

Uuid parse_uuid(const PGresult* r, int row, int col, std::string_view op, const char* what) {
  if (PQgetisnull(r, row, col)) corrupt(op, what);
  auto id = Uuid::parse(PQgetvalue(r, row, col));
  if (!id) corrupt(op, what);
  return *id;
}

std::string get_text(const PGresult* r, int row, int col, std::string_view op, const char* what) {
  if (PQgetisnull(r, row, col)) corrupt(op, what);
  return std::string(PQgetvalue(r, row, col), static_cast<std::size_t>(PQgetlength(r, row, col)));
}

KeyInfo read_info(const PGresult* r, int row, std::string_view op) {
  if (PQnfields(r) < kInfoColumnCount) corrupt(op, "missing columns");
  KeyInfo info;
  info.key_id = parse_uuid(r, row, 0, op, "key_id is not a UUID");
  info.account_id = parse_uuid(r, row, 1, op, "account_id is not a UUID");
  info.public_key = get_text(r, row, 2, op, "public_key is null");
  info.title = get_text(r, row, 3, op, "title is null");
  info.description = get_text(r, row, 4, op, "description is null");
  const std::int64_t status = parse_int(r, row, 5, op, "status is not an integer");
  if (status != 0 && status != 1) corrupt(op, "unknown status");
  info.status = static_cast<KeyStatus>(status);
  info.created_at = from_unix_millis(parse_int(r, row, 6, op, "created_at is not an integer"));
  info.expires_at = parse_optional_time(r, row, 7, op, "expires_at is not an integer");
  info.last_used_at = parse_optional_time(r, row, 8, op, "last_used_at is not an integer");
  return info;
}

Digest read_digest(const PGresult* r, int row, int col, std::string_view op) {
  // bytea in text form is "\x" and hex (bytea_output = hex, set per session).
  Digest d;
  if (PQgetisnull(r, row, col) || PQgetlength(r, row, col) != 2 + 64) corrupt(op, "digest is not 32 bytes");
  const char* s = PQgetvalue(r, row, col);
  const bool hex = s[0] == '\\' && s[1] == 'x' &&
                   detail::hex_decode(std::string_view(s + 2, 2 * d.bytes.size()), d.bytes.data());
  if (!hex) corrupt(op, "digest is not hex");
  const std::int64_t pepper = parse_int(r, row, col + 1, op, "pepper_id is not an integer");
  if (pepper < 0 || pepper > std::numeric_limits<std::uint32_t>::max()) corrupt(op, "pepper_id out of range");
  d.pepper_id = static_cast<std::uint32_t>(pepper);
  return d;
}

std::optional<KeyInfo> single_row(const PgResult& r, std::string_view op) {
  if (PQntuples(r.get()) == 0) return std::nullopt;
  return read_info(r.get(), 0, op);
}

void require_no_nul(std::string_view text, std::string_view op, const char* field) {
  if (text.find('\0') != std::string_view::npos) {
    throw Error(ErrorCode::storage,
                fmt::format("PostgresStore {} failed: {} contains a NUL byte, which PostgreSQL "
                            "text cannot hold", op, field));
  }
}

bool valid_schema_name(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  if (s[0] >= '0' && s[0] <= '9') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

}  // namespace

struct PostgresStore::Impl {
  // conninfo is copied once, straight into its member (a by-value parameter moved in
  // would leave a short string's bytes behind in the parameter).
  Impl(const std::string& ci, PostgresStoreOptions o)  // NOLINT(modernize-pass-by-value)
      : conninfo(ci), options(std::move(o)), quoted_schema('"' + options.schema + '"'),
        sql(quoted_schema) {
    idle.reserve(pool_limit());  // see ~Lease
  }
  // The connection string may hold a password. (libpq wipes its own copy in each
  // PGconn when the connection closes; the pooled ones close after this, as members.)
  ~Impl() { detail::wipe(conninfo); }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  std::string conninfo;  // Not changed after construction, but wiped by ~Impl.
  const PostgresStoreOptions options;
  const std::string quoted_schema;
  const Statements sql;

  std::mutex mu;
  std::condition_variable cv;
  // Capacity reserved up front for every connection the pool may open: returning one
  // (in ~Lease) must not allocate. Guarded by mu.
  std::vector<std::unique_ptr<PgConnection>> idle;
  std::size_t open = 0;  // Guarded by mu: idle + leased, at most pool_limit().

  [[nodiscard]] std::size_t pool_limit() const noexcept { return std::max<std::size_t>(1, options.pool_size); }

  [[nodiscard]] Deadline statement_deadline() const { return SteadyClock::now() + options.statement_timeout; }

  // A new connection with the session settings made and (when `prepared`) the
  // statements prepared: they name the tables, so not before the migration.
  std::unique_ptr<PgConnection> connect(bool prepared = true) {
    auto c = std::make_unique<PgConnection>(conninfo, SteadyClock::now() + options.connect_timeout);
    const auto t = std::max<std::int64_t>(1, options.statement_timeout.count());
    const Deadline d = statement_deadline();
    // The server gives up on a statement, or on waiting for a lock, before the client
    // does, so a slow statement is reported as a timeout, not a lost connection.
    c->exec("connect", fmt::format("SET statement_timeout = {0}; SET lock_timeout = {0};"
                                   " SET idle_in_transaction_session_timeout = {1};"
                                   " SET bytea_output = 'hex'",
                                   std::max<std::int64_t>(1, t - t / 10), t * 2),
            d);
    if (!prepared) return c;
    c->prepare("connect", kFind, sql.find, d);
    c->prepare("connect", kList, sql.list, d);
    c->prepare("connect", kInsert, sql.insert, d);
    c->prepare("connect", kSetStatus, sql.set_status, d);
    c->prepare("connect", kRemove, sql.remove, d);
    c->prepare("connect", kLastUse, sql.last_use, d);
    c->prepare("connect", kRevision, sql.revision, d);
    c->prepare("connect", kChanges, sql.changes, d);
    return c;
  }

  // A connection checked out of the pool for one attempt.
  class Lease {
   public:
    explicit Lease(Impl& impl) : impl_(impl) {
      const Deadline wait_until = SteadyClock::now() + impl_.options.pool_wait;
      std::unique_lock<std::mutex> lock(impl_.mu);
      for (;;) {
        while (!impl_.idle.empty()) {
          std::unique_ptr<PgConnection> c = std::move(impl_.idle.back());
          impl_.idle.pop_back();
          if (c->healthy()) {
            conn_ = std::move(c);
            return;
          }
          --impl_.open;  // dead (server restarted): closed below, outside the lock
          lock.unlock();
          c.reset();
          lock.lock();
        }
        if (impl_.open < impl_.pool_limit()) break;
        if (impl_.cv.wait_until(lock, wait_until) == std::cv_status::timeout &&
            impl_.idle.empty() && impl_.open >= impl_.options.pool_size) {
          throw Error(ErrorCode::busy, "PostgresStore: no free connection within pool_wait");
        }
      }
      ++impl_.open;
      lock.unlock();
      try {
        conn_ = impl_.connect();  // network I/O: never under the pool mutex
      } catch (...) {
        lock.lock();
        --impl_.open;
        impl_.cv.notify_one();
        throw;
      }
    }
    ~Lease() {
      std::unique_lock<std::mutex> lock(impl_.mu);
      if (conn_) {
        // Cannot allocate, so cannot throw (which in a destructor is std::terminate,
        // under memory pressure exactly): idle.size() < open <= pool_limit(), the
        // capacity reserved in Impl's constructor, and drop_idle() keeps it.
        impl_.idle.push_back(std::move(conn_));
      } else {
        --impl_.open;
      }
      impl_.cv.notify_one();
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

    PgConnection& operator*() const noexcept { return *conn_; }
    PgConnection* operator->() const noexcept { return conn_.get(); }
    // The connection is broken: close it instead of returning it to the pool.
    void discard() noexcept { conn_.reset(); }

   private:
    Impl& impl_;
    std::unique_ptr<PgConnection> conn_;
  };

  // Closes every idle connection: after one was found dead, the others (opened before
  // the same restart) are dead too. One at a time, each closed outside the lock, and
  // without a second vector: swapping one in would take idle's reserved capacity away
  // (see ~Lease), and making one could fail.
  void drop_idle() noexcept {
    std::size_t left = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      left = idle.size();
    }
    for (; left > 0; --left) {
      std::unique_ptr<PgConnection> dead;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (idle.empty()) break;
        dead = std::move(idle.back());
        idle.pop_back();
        --open;
      }
    }  // each `dead` closes here, outside the lock
    cv.notify_all();
  }

  // Runs f(connection) once; if the connection turns out to be lost (not timed out)
  // and it had served before, once more on a fresh one when `retry` allows it.
  template <typename F>
  auto run(std::string_view op, bool retry, F&& f) -> decltype(f(std::declval<PgConnection&>())) {
    for (int attempt = 0;; ++attempt) {
      Lease c(*this);
      try {
        auto guard_used = [&c] { c->used = true; };
        if constexpr (std::is_void_v<decltype(f(*c))>) {
          f(*c);
          guard_used();
          return;
        } else {
          auto result = f(*c);
          guard_used();
          return result;
        }
      } catch (const pg::ConnectionLost& e) {
        const bool was_used = c->used;
        c.discard();
        drop_idle();
        if (!retry || attempt > 0 || !was_used || e.timed_out()) throw Error(e.code(), e.what());
      } catch (const Error&) {
        throw;
      } catch (const std::exception& e) {
        throw Error(ErrorCode::storage, fmt::format("PostgresStore {} failed: {}", op, e.what()));
      }
    }
  }
};

PostgresStore::PostgresStore(const std::string& conninfo, PostgresStoreOptions options) {
  if (!valid_schema_name(options.schema)) {
    throw Error(ErrorCode::invalid_argument,
                "PostgresStore: schema must be 1-63 letters, digits or underscores, not "
                "starting with a digit");
  }
  pg::check_conninfo(conninfo);  // fails fast, before any I/O, quoting none of it
  impl_ = std::make_unique<Impl>(conninfo, std::move(options));
  Impl& impl = *impl_;
  {
    std::unique_ptr<PgConnection> conn = impl.connect(false);
    PgConnection& c = *conn;
    const Deadline d = impl.statement_deadline();
    const std::string& s = impl.quoted_schema;
    c.exec("open", "BEGIN", d);
    try {
      // Concurrent openers of the same schema migrate one at a time.
      const std::string key = "apikeys:" + impl.options.schema;
      const char* values[] = {key.c_str()};
      c.exec_params("open", "SELECT pg_advisory_xact_lock(hashtext($1)::bigint)", 1, values,
                    nullptr, nullptr, d);
      c.exec("open", fmt::format("CREATE SCHEMA IF NOT EXISTS {0};"
                                 " CREATE TABLE IF NOT EXISTS {0}.apikeys_schema_version ("
                                 "id integer NOT NULL PRIMARY KEY CHECK (id = 1),"
                                 " version integer NOT NULL);"
                                 " INSERT INTO {0}.apikeys_schema_version (id, version)"
                                 " VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
                                 s),
             d);
      PgResult r = c.exec("open", fmt::format("SELECT version FROM {}.apikeys_schema_version"
                                              " WHERE id = 1", s), d);
      if (PQntuples(r.get()) != 1) corrupt("open", "apikeys_schema_version has no row");
      const auto version = parse_int(r.get(), 0, 0, "open", "version is not an integer");
      if (version > kCurrentVersion) {
        throw Error(ErrorCode::storage,
                    fmt::format("PostgresStore open failed: schema version {} is newer than this "
                                "library supports ({})", version, kCurrentVersion));
      }
      for (const Migration& step : kMigrations) {
        if (step.to <= version) continue;
        c.exec("open", replace_schema(step.sql, s), d);
        c.exec("open", fmt::format("UPDATE {}.apikeys_schema_version SET version = {} WHERE id = 1",
                                   s, step.to), d);
      }
      c.exec("open", "COMMIT", d);
    } catch (const pg::ConnectionLost&) {
      throw;
    } catch (...) {
      try {
        c.exec("open", "ROLLBACK", impl.statement_deadline());
      } catch (...) {
      }
      throw;
    }
  }  // The migrating connection closes: pooled ones are opened (and prepared) on demand.
}

PostgresStore::~PostgresStore() = default;

int PostgresStore::schema_version() noexcept { return kCurrentVersion; }

void PostgresStore::insert(const KeyRecord& record) {
  const KeyInfo& info = record.info;
  require_no_nul(info.public_key, "insert", "public_key");
  require_no_nul(info.title, "insert", "title");
  require_no_nul(info.description, "insert", "description");
  const std::string key_id = info.key_id.to_string();
  const std::string account_id = info.account_id.to_string();
  const std::string pepper = std::to_string(record.digest.pepper_id);
  const std::string status = std::to_string(static_cast<int>(info.status));
  const std::string created = std::to_string(to_unix_millis(info.created_at));
  const std::string expires = info.expires_at ? std::to_string(to_unix_millis(*info.expires_at)) : "";
  const std::string used = info.last_used_at ? std::to_string(to_unix_millis(*info.last_used_at)) : "";
  const char* values[] = {key_id.c_str(),
                          account_id.c_str(),
                          info.public_key.c_str(),
                          reinterpret_cast<const char*>(record.digest.bytes.data()),
                          pepper.c_str(),
                          info.title.c_str(),
                          info.description.c_str(),
                          status.c_str(),
                          created.c_str(),
                          info.expires_at ? expires.c_str() : nullptr,
                          info.last_used_at ? used.c_str() : nullptr};
  // The digest goes as binary (raw bytes, no escaping); the rest as text.
  const int lengths[] = {0, 0, 0, static_cast<int>(record.digest.bytes.size()), 0, 0, 0, 0, 0, 0, 0};
  const int formats[] = {0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0};
  // Not retried: a lost reply may hide a committed insert (a retry would say
  // already_exists about our own row).
  impl_->run("insert", false, [&](PgConnection& c) {
    (void)c.exec_prepared("insert", kInsert, 11, values, lengths, formats, impl_->statement_deadline());
  });
}

std::optional<KeyRecord> PostgresStore::find(std::string_view public_key) {
  // Text parameters end at a NUL: such a key would match a shorter one. No key has one.
  if (public_key.find('\0') != std::string_view::npos) return std::nullopt;
  const std::string key(public_key);
  const char* values[] = {key.c_str()};
  return impl_->run("find", true, [&](PgConnection& c) -> std::optional<KeyRecord> {
    PgResult r = c.exec_prepared("find", kFind, 1, values, nullptr, nullptr, impl_->statement_deadline());
    if (PQntuples(r.get()) == 0) return std::nullopt;
    KeyRecord record;
    record.info = read_info(r.get(), 0, "find");
    record.digest = read_digest(r.get(), 0, kInfoColumnCount, "find");
    return record;
  });
}

std::vector<KeyInfo> PostgresStore::list(const Uuid& account_id) {
  const std::string account = account_id.to_string();
  const char* values[] = {account.c_str()};
  return impl_->run("list", true, [&](PgConnection& c) {
    PgResult r = c.exec_prepared("list", kList, 1, values, nullptr, nullptr, impl_->statement_deadline());
    std::vector<KeyInfo> out;
    const int n = PQntuples(r.get());
    out.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) out.push_back(read_info(r.get(), i, "list"));
    return out;
  });
}

std::optional<KeyInfo> PostgresStore::set_status(const Uuid& account_id, const Uuid& key_id,
                                                 KeyStatus status) {
  const std::string s = std::to_string(static_cast<int>(status));
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  const char* values[] = {s.c_str(), key.c_str(), account.c_str()};
  // Idempotent: a retry after a lost reply sets the same status and returns the row.
  return impl_->run("set_status", true, [&](PgConnection& c) {
    PgResult r = c.exec_prepared("set_status", kSetStatus, 3, values, nullptr, nullptr,
                                 impl_->statement_deadline());
    return single_row(r, "set_status");
  });
}

std::optional<KeyInfo> PostgresStore::remove(const Uuid& account_id, const Uuid& key_id) {
  const std::string key = key_id.to_string();
  const std::string account = account_id.to_string();
  const char* values[] = {key.c_str(), account.c_str()};
  // Not retried: after a lost reply the row may be gone, and a retry would answer
  // "no such key" about a delete that succeeded.
  return impl_->run("remove", false, [&](PgConnection& c) {
    PgResult r = c.exec_prepared("remove", kRemove, 2, values, nullptr, nullptr,
                                 impl_->statement_deadline());
    return single_row(r, "remove");
  });
}

void PostgresStore::record_last_use(const std::vector<LastUse>& uses) {
  if (uses.empty()) return;
  std::string ids = "{";
  std::string times = "{";
  for (std::size_t i = 0; i < uses.size(); ++i) {
    if (i != 0) {
      ids += ',';
      times += ',';
    }
    ids += uses[i].key_id.to_string();
    times += std::to_string(to_unix_millis(uses[i].at));
  }
  ids += '}';
  times += '}';
  const char* values[] = {ids.c_str(), times.c_str()};
  // Idempotent (keeps the later time): safe to retry.
  impl_->run("record_last_use", true, [&](PgConnection& c) {
    (void)c.exec_prepared("record_last_use", kLastUse, 2, values, nullptr, nullptr,
                          impl_->statement_deadline());
  });
}

std::uint64_t PostgresStore::revision() {
  return impl_->run("revision", true, [&](PgConnection& c) {
    PgResult r = c.exec_prepared("revision", kRevision, 0, nullptr, nullptr, nullptr,
                                 impl_->statement_deadline());
    if (PQntuples(r.get()) != 1) corrupt("revision", "apikeys_meta has no row");
    const std::int64_t v = parse_int(r.get(), 0, 0, "revision", "revision is not an integer");
    if (v < 0) corrupt("revision", "revision is negative");
    return static_cast<std::uint64_t>(v);
  });
}

std::optional<StoreChanges> PostgresStore::changes_since(std::uint64_t since) {
  if (since > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
  const std::string from = std::to_string(since);
  const char* values[] = {from.c_str()};
  return impl_->run("changes_since", true, [&](PgConnection& c) -> std::optional<StoreChanges> {
    PgResult r = c.exec_prepared("changes_since", kChanges, 1, values, nullptr, nullptr,
                                 impl_->statement_deadline());
    const int n = PQntuples(r.get());
    if (n < 1) corrupt("changes_since", "apikeys_meta has no row");
    const std::int64_t now = parse_int(r.get(), 0, 0, "changes_since", "revision is not an integer");
    if (now < 0) corrupt("changes_since", "revision is negative");
    StoreChanges out;
    out.revision = static_cast<std::uint64_t>(now);
    // Older than the log can reach, or newer than the store (a restored backup).
    if (since > out.revision || out.revision - since > static_cast<std::uint64_t>(kChangeLogSize)) {
      return std::nullopt;
    }
    if (since == out.revision) return out;
    std::uint64_t expected = since + 1;
    out.public_keys.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      // Every step since `since` must be there, or some change would go unseen.
      if (PQgetisnull(r.get(), i, 1)) return std::nullopt;
      const std::int64_t step = parse_int(r.get(), i, 1, "changes_since", "revision is not an integer");
      if (static_cast<std::uint64_t>(step) != expected) return std::nullopt;
      out.public_keys.emplace_back(PQgetvalue(r.get(), i, 2));
      ++expected;
    }
    if (expected != out.revision + 1) return std::nullopt;
    return out;
  });
}

}  // namespace apikeys
