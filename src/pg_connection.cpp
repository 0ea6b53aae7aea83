#include "pg_connection.hpp"

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <sys/socket.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace apikeys::pg {

namespace {

// Waits until the connection's socket is ready (read or write) or the deadline passes.
bool wait_socket(PGconn* conn, bool for_write, Deadline deadline) {
  const int fd = PQsocket(conn);
  if (fd < 0) return false;
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
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
  return state.substr(0, 2) == "08" ||                                // connection exception
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
  if (mentions(m, {"pg_hba.conf"}))
    return "the server does not accept this host, user and database (pg_hba.conf)";
  if (mentions(m, {"does not exist"})) return "the user (role) or the database does not exist";
  if (mentions(m, {"too many", "starting up", "shutting down", "recovery", "not accepting"})) {
    return "the server is not accepting connections now (starting, stopping, or too many connections)";
  }
  if (mentions(m, {"timeout expired"})) return "timed out (connect_timeout)";
  if (mentions(m, {"SSL", "certificate", "GSS"})) return "TLS or GSSAPI negotiation failed";
  if (mentions(m, {"invalid", "could not match"})) {
    return "a connection option has an invalid value (a port, sslmode or other setting)";
  }
  if (mentions(m, {"refused", "could not translate host name", "No route", "unreachable",
                   "No such file", "closed the connection", "reset by peer", "could not connect",
                   "could not send", "could not receive"})) {
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
  // default: a library must not write into its host's logs. The receiver keeps only
  // whether the server said it is ending the session: while idle, libpq takes that
  // FATAL error for a notice, and it may arrive before the connection closes.
  PQsetNoticeReceiver(
      conn_,
      [](void* self, const PGresult* notice) {
        const char* severity = PQresultErrorField(notice, PG_DIAG_SEVERITY_NONLOCALIZED);
        const char* state = PQresultErrorField(notice, PG_DIAG_SQLSTATE);
        const std::string_view sev = severity != nullptr ? severity : "";
        const std::string_view code = state != nullptr ? state : "";
        if (sev == "FATAL" || sev == "PANIC" || code.substr(0, 3) == "57P" ||
            code.substr(0, 2) == "08") {
          static_cast<PgConnection*>(self)->ended_ = true;
        }
      },
      this);
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
#if defined(POLLRDHUP)
  constexpr int kClosed = POLLHUP | POLLERR | POLLRDHUP;
#else
  constexpr int kClosed = POLLHUP | POLLERR;
#endif
  // A server that ends a session (a restart, pg_terminate_backend(), an idle timeout)
  // sends an error, which libpq takes as a notice while idle, then closes: only the
  // peer's shutdown (POLLRDHUP, where the system has it; else the end of the stream
  // behind the notice) tells that the next command would fail.
  p.events = static_cast<short>(POLLIN | (kClosed & ~(POLLHUP | POLLERR)));
  if (::poll(&p, 1, 0) <= 0) return true;  // nothing pending: as it was
  if ((p.revents & kClosed) != 0) return false;
  // Something arrived while idle: a notice, or the server saying goodbye (ended_).
  if (PQconsumeInput(conn_) == 0 || ended_) return false;
  char byte = 0;
  if (::recv(p.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0) return false;  // closed
  return PQstatus(conn_) == CONNECTION_OK && PQisBusy(conn_) == 0;
}

bool PgConnection::reusable() const noexcept {
  return PQstatus(conn_) == CONNECTION_OK && PQtransactionStatus(conn_) == PQTRANS_IDLE;
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
  if (PQsendPrepare(conn_, name, sql.c_str(), 0, nullptr) == 0)
    lost(op, PQerrorMessage(conn_), false);
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

}  // namespace apikeys::pg
