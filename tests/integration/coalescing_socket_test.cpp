// The relay's socket layer under Beast (src/relay/coalescing_socket.hpp), on real loopback TCP:
// writes stay whole and in order whatever their sizes and however many writers share the
// socket; small writes wait for the round's flush; reads ahead serve small reads; a WebSocket
// on top closes after its last message; destroying it mid-write is safe; over TLS the same
// (a TLS session handed over with its connection).
#include "relay/coalescing_socket.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

#include "test_certificates.hpp"

namespace sluice::relay {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
namespace ssl = asio::ssl;

// A connected pair of loopback sockets on `io`.
std::pair<tcp::socket, tcp::socket> connected_pair(asio::io_context& io) {
  tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  tcp::socket a(io);
  tcp::socket b(io);
  a.connect(acceptor.local_endpoint());
  acceptor.accept(b);
  a.set_option(tcp::no_delay(true));
  b.set_option(tcp::no_delay(true));
  return {std::move(a), std::move(b)};
}

// A record: u32 length of what follows, u32 writer, u32 sequence, then bytes derived from
// (writer, sequence, position): a torn, reordered or interleaved record does not parse.
std::string record(std::uint32_t writer, std::uint32_t seq, std::size_t payload) {
  std::string r(12 + payload, '\0');
  const auto len = static_cast<std::uint32_t>(8 + payload);
  std::memcpy(r.data(), &len, 4);
  std::memcpy(r.data() + 4, &writer, 4);
  std::memcpy(r.data() + 8, &seq, 4);
  for (std::size_t i = 0; i < payload; ++i)
    r[12 + i] = static_cast<char>((writer * 31 + seq * 7 + i) & 0xFF);
  return r;
}

// Reads records until `total` arrived or the stream ends; checks each, and that every writer's
// sequence goes 0, 1, 2, ...
struct RecordReader {
  std::vector<std::uint32_t> next;  // per writer
  std::size_t records = 0;
  std::string problem;
  void run(tcp::socket& s, std::size_t total) {
    std::vector<char> body;
    while (records < total && problem.empty()) {
      std::uint32_t len = 0;
      error_code ec;
      asio::read(s, asio::buffer(&len, 4), ec);
      if (ec) {
        problem = "stream ended after " + std::to_string(records) + " records: " + ec.message();
        return;
      }
      if (len < 8 || len > (8U << 20)) {
        problem = "bad length " + std::to_string(len) + " at record " + std::to_string(records);
        return;
      }
      body.resize(len);
      asio::read(s, asio::buffer(body), ec);
      if (ec) {
        problem = "torn record: " + ec.message();
        return;
      }
      std::uint32_t writer = 0;
      std::uint32_t seq = 0;
      std::memcpy(&writer, body.data(), 4);
      std::memcpy(&seq, body.data() + 4, 4);
      if (writer >= next.size() || seq != next[writer]) {
        problem =
            "writer " + std::to_string(writer) + " record " + std::to_string(seq) + " out of order";
        return;
      }
      ++next[writer];
      for (std::size_t i = 8; i < len; ++i) {
        if (body[i] != static_cast<char>((writer * 31 + seq * 7 + (i - 8)) & 0xFF)) {
          problem = "record " + std::to_string(seq) + " of writer " + std::to_string(writer) +
                    " corrupt at byte " + std::to_string(i);
          return;
        }
      }
      ++records;
    }
  }
};

// A writer that issues its records one after another (each once the previous completed), as
// Beast does and as the relay's own frame writes do: by try_append while they fit, else by
// async_write_some.
struct Writer : std::enable_shared_from_this<Writer> {
  CoalescingSocket& s;
  std::uint32_t id;
  std::vector<std::string> records;
  bool use_append;
  std::size_t at = 0;
  error_code failed;
  Writer(CoalescingSocket& sock, std::uint32_t writer, std::vector<std::string> r, bool append)
      : s(sock), id(writer), records(std::move(r)), use_append(append) {}
  void next() {
    while (at < records.size()) {
      const std::string& r = records[at];
      if (use_append && s.try_append(asio::buffer(r))) {
        ++at;
        continue;
      }
      // Two buffers, as a frame header and its payload are.
      const std::array<asio::const_buffer, 2> parts{asio::buffer(r.data(), 4),
                                                    asio::buffer(r.data() + 4, r.size() - 4)};
      s.async_write_some(parts, [self = shared_from_this()](error_code ec, std::size_t n) {
        if (ec || n != self->records[self->at].size()) {
          self->failed = ec ? ec : asio::error::message_size;
          return;
        }
        ++self->at;
        self->next();
      });
      return;
    }
  }
};

std::vector<std::string> records_of(std::uint32_t writer, std::size_t n, std::size_t max_payload,
                                    unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; ++i) {
    // Mostly small (batched), some around the copy limit, some large (written straight).
    const unsigned kind = rng() % 10;
    std::size_t size = rng() % 200;
    if (kind == 8) size = 16 * 1024 - 100 + rng() % 200;
    if (kind == 9) size = rng() % max_payload;
    out.push_back(record(writer, static_cast<std::uint32_t>(i), size));
  }
  return out;
}

TEST(CoalescingSocket, WritesStayWholeAndInOrderWhateverTheirSizesAndWriters) {
  for (const bool with_queue : {false, true}) {
    asio::io_context io;
    auto work = asio::make_work_guard(io);  // (as the relay's loop: it never runs out of work)
    auto pair = connected_pair(io);
    auto& a = pair.first;
    auto& b = pair.second;
    FlushQueue flushes;
    ReadyQueue ready(io.get_executor());
    CoalescingSocket::Options o;
    if (with_queue) {  // as in the relay: the loop's queues
      o.flush_queue = &flushes;
      o.ready_queue = &ready;
    }
    CoalescingSocket s(std::move(a), o);
    // Three writers at once: appends + writes, writes only (a Beast), tiny control-like ones.
    auto w0 = std::make_shared<Writer>(s, 0, records_of(0, 3000, std::size_t{300} * 1024, 1), true);
    auto w1 =
        std::make_shared<Writer>(s, 1, records_of(1, 1000, std::size_t{300} * 1024, 2), false);
    auto w2 = std::make_shared<Writer>(s, 2, records_of(2, 500, 100, 3), false);
    const std::size_t total = 4500;
    RecordReader reader;
    reader.next.assign(3, 0);
    std::thread t([&] { reader.run(b, total); });
    w0->next();
    w1->next();
    w2->next();
    // The relay's loop: rounds of ready handlers, then the deferred flushes; until every
    // record was written and handed to the kernel (or a writer failed).
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < give_up) {
      io.run_one_for(std::chrono::milliseconds(10));
      while (io.poll_one() != 0) {
      }
      flushes.run();
      const bool failed = w0->failed || w1->failed || w2->failed;
      if (failed || (w0->at == w0->records.size() && w1->at == w1->records.size() &&
                     w2->at == w2->records.size() && s.unflushed_bytes() == 0))
        break;
    }
    s.next_layer().shutdown(tcp::socket::shutdown_send);  // a reader still waiting ends
    t.join();
    EXPECT_EQ(reader.problem, "") << (with_queue ? "with a flush queue" : "posted flushes");
    EXPECT_EQ(reader.records, total);
    EXPECT_FALSE(w0->failed);
    EXPECT_FALSE(w1->failed);
    EXPECT_FALSE(w2->failed);
  }
}

TEST(CoalescingSocket, WithAFlushQueueSmallWritesLeaveOnlyWhenTheRoundEnds) {
  asio::io_context io;
  auto work = asio::make_work_guard(io);
  auto [a, b] = connected_pair(io);
  FlushQueue flushes;
  CoalescingSocket::Options o;
  o.flush_queue = &flushes;
  CoalescingSocket s(std::move(a), o);
  std::string sent;
  int completed = 0;
  for (int i = 0; i < 20; ++i) {
    const std::string r = record(0, static_cast<std::uint32_t>(i), 50);
    sent += r;
    if (i % 2 == 0) {
      ASSERT_TRUE(s.try_append(asio::buffer(r)));
    } else {
      auto kept = std::make_shared<std::string>(r);
      s.async_write_some(asio::buffer(*kept), [&completed, kept](error_code ec, std::size_t n) {
        EXPECT_FALSE(ec);
        EXPECT_EQ(n, kept->size());
        ++completed;
      });
    }
  }
  io.poll();
  EXPECT_EQ(completed, 10);  // complete at once: copied into the batch
  EXPECT_EQ(s.unflushed_bytes(), sent.size());
  EXPECT_TRUE(s.last_write_batched());
  char probe = 0;
  // Nothing was handed to the kernel: the peer has nothing to read.
  EXPECT_EQ(::recv(b.native_handle(), &probe, 1, MSG_DONTWAIT), -1);
  EXPECT_TRUE(flushes.run());
  io.run_for(std::chrono::milliseconds(100));
  EXPECT_EQ(s.unflushed_bytes(), 0U);
  std::string got(sent.size(), '\0');
  asio::read(b, asio::buffer(got));
  EXPECT_EQ(got, sent);
  EXPECT_FALSE(flushes.run());  // nothing deferred any more
}

TEST(CoalescingSocket, ReadAheadServesSmallReadsAndLargeOnesGoStraightThrough) {
  asio::io_context io;
  auto [a, b] = connected_pair(io);
  CoalescingSocket::Options o;
  o.read_ahead = std::size_t{64} * 1024;
  CoalescingSocket s(std::move(a), o);
  std::string small;
  for (int i = 0; i < 500; ++i) small += record(0, static_cast<std::uint32_t>(i), 90);
  const std::string large = record(1, 0, 2 << 20);
  std::thread peer([&, &b = b] {
    asio::write(b, asio::buffer(small));
    asio::write(b, asio::buffer(large));
  });
  // Small reads (as Beast makes: 1536 bytes at most), asynchronously.
  std::string got;
  std::array<char, 1536> chunk{};
  std::function<void()> read_small = [&] {
    s.async_read_some(asio::buffer(chunk.data(), std::min(chunk.size(), small.size() - got.size())),
                      [&](error_code ec, std::size_t n) {
                        ASSERT_FALSE(ec);
                        got.append(chunk.data(), n);
                        if (got.size() < small.size()) read_small();
                      });
  };
  read_small();
  io.run();
  io.restart();
  EXPECT_EQ(got, small);
  // Then a large read, synchronously (as a client's): whatever was read ahead first, then the
  // rest straight into the caller's memory.
  std::string big(large.size(), '\0');
  std::size_t have = 0;
  while (have < big.size()) {
    error_code ec;
    have += s.read_some(asio::buffer(big.data() + have, big.size() - have), ec);
    ASSERT_FALSE(ec);
  }
  EXPECT_EQ(big, large);
  peer.join();
}

TEST(CoalescingSocket, AWebSocketOnItSendsEveryMessageBeforeItsClose) {
  namespace websocket = boost::beast::websocket;
  asio::io_context io;
  tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  const auto port = acceptor.local_endpoint().port();
  constexpr int kMessages = 300;
  std::vector<std::string> received;
  boost::beast::error_code client_end;
  std::thread client([&] {
    asio::io_context cio;
    websocket::stream<CoalescingSocket> ws(cio);
    boost::beast::get_lowest_layer(ws).connect({asio::ip::make_address("127.0.0.1"), port});
    ws.handshake("127.0.0.1", "/");
    for (;;) {
      boost::beast::flat_buffer buf;
      ws.read(buf, client_end);
      if (client_end) break;
      received.push_back(boost::beast::buffers_to_string(buf.data()));
    }
  });
  FlushQueue flushes;
  ReadyQueue ready(io.get_executor());
  CoalescingSocket::Options o;
  o.flush_queue = &flushes;
  o.ready_queue = &ready;
  o.read_ahead = std::size_t{64} * 1024;
  auto ws = std::make_unique<websocket::stream<CoalescingSocket>>(acceptor.accept(), o);
  ws->accept();
  ws->binary(true);
  // Beast writes each message (small: batched); then the close, flushed before the teardown.
  int i = 0;
  std::function<void(error_code)> write_next = [&](error_code ec) {
    ASSERT_FALSE(ec);
    if (i == kMessages) {
      ws->async_close(websocket::close_code::normal, [](error_code) {});
      return;
    }
    const int n = i++;
    const std::string m =
        "message " + std::to_string(n) + std::string(n % 7 == 0 ? 40000 : 10, 'x');
    auto kept = std::make_shared<std::string>(m);
    ws->async_write(asio::buffer(*kept),
                    [kept, &write_next](error_code e, std::size_t) { write_next(e); });
  };
  write_next({});
  while (io.run_one_for(std::chrono::seconds(5)) != 0) {
    while (io.poll_one() != 0) {
    }
    flushes.run();
  }
  client.join();
  EXPECT_EQ(client_end, websocket::error::closed) << client_end.message();
  ASSERT_EQ(received.size(), static_cast<std::size_t>(kMessages));
  for (int k = 0; k < kMessages; ++k)
    EXPECT_EQ(received[k].rfind("message " + std::to_string(k), 0), 0U);
}

TEST(CoalescingSocket, DestroyedWithWritesInFlightItsHandlersSeeAbortedAndNothingElse) {
  asio::io_context io;
  auto [a, b] = connected_pair(io);  // b never reads: the large write stays in flight
  auto s = std::make_unique<CoalescingSocket>(std::move(a));
  const auto big = std::make_shared<std::string>(32 << 20, 'x');
  const auto small = std::make_shared<std::string>(100, 'y');
  error_code big_ec;
  error_code small_ec;
  bool big_done = false;
  bool small_done = false;
  s->async_write_some(asio::buffer(*big), [&, big](error_code ec, std::size_t) {
    big_ec = ec;
    big_done = true;
  });
  ASSERT_TRUE(s->try_append(asio::buffer(*small)));  // waits behind the large one
  s->async_write_some(asio::buffer(*big), [&, big](error_code ec, std::size_t) {
    small_ec = ec;  // (too large to batch: waits for the one in flight)
    small_done = true;
  });
  io.run_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(big_done);
  s.reset();  // the socket closes; its operations end
  io.run_for(std::chrono::milliseconds(200));
  EXPECT_TRUE(big_done);
  EXPECT_TRUE(small_done);
  EXPECT_EQ(big_ec, asio::error::operation_aborted);
  EXPECT_EQ(small_ec, asio::error::operation_aborted);
}

// A TLS connection on loopback: the server side as the HTTP port hands it over (a Connection
// whose session has done its handshake), the client side an Asio TLS stream.
struct TlsPair {
  explicit TlsPair(asio::io_context& io, const testing::Certificates& certs)
      : server_ctx(ssl::context::tls_server),
        client_ctx(ssl::context::tls_client),
        sockets(connected_pair(io)),
        server{std::move(sockets.first), nullptr} {
    server_ctx.use_certificate_chain_file(certs.path("relay.pem"));
    server_ctx.use_private_key_file(certs.path("relay.key"), ssl::context::pem);
    client_ctx.load_verify_file(certs.path("ca.pem"));
    client_ctx.set_verify_mode(ssl::verify_peer);
    server.tls = std::make_unique<TlsStream>(server.socket, server_ctx);
    client = std::make_unique<ssl::stream<tcp::socket>>(std::move(sockets.second), client_ctx);
    error_code server_ec;
    error_code client_ec;
    server.tls->async_handshake(ssl::stream_base::server, [&](error_code ec) { server_ec = ec; });
    client->async_handshake(ssl::stream_base::client, [&](error_code ec) { client_ec = ec; });
    io.run();
    io.restart();
    ok = !server_ec && !client_ec;
  }
  ssl::context server_ctx;
  ssl::context client_ctx;
  std::pair<tcp::socket, tcp::socket> sockets;
  Connection server;
  std::unique_ptr<ssl::stream<tcp::socket>> client;
  bool ok = false;
};

TEST(CoalescingSocket, OverTlsWritesStayWholeAndInOrderAndDestroyingItMidWriteIsSafe) {
  const testing::Certificates certs;
  ASSERT_TRUE(certs.ok) << "openssl could not make the test certificates";
  asio::io_context io;
  TlsPair pair(io, certs);
  ASSERT_TRUE(pair.ok);
  auto s = std::make_unique<CoalescingSocket>(std::move(pair.server), CoalescingSocket::Options{});
  ASSERT_TRUE(s->tls());
  // Small writes (batched into one TLS record) and large ones (many records, not copied).
  std::string sent;
  std::vector<std::shared_ptr<std::string>> held;
  int completed = 0;
  for (std::uint32_t i = 0; i < 300; ++i) {
    held.push_back(std::make_shared<std::string>(record(0, i, i % 50 == 0 ? (1 << 20) : 60)));
    sent += *held.back();
    s->async_write_some(asio::buffer(*held.back()), [&](error_code ec, std::size_t) {
      EXPECT_FALSE(ec) << ec.message();
      ++completed;
    });
  }
  std::string received(sent.size(), '\0');
  error_code read_ec;
  asio::async_read(*pair.client, asio::buffer(received),
                   [&](error_code ec, std::size_t) { read_ec = ec; });
  io.run_for(std::chrono::seconds(20));
  io.restart();
  EXPECT_EQ(completed, 300);
  EXPECT_FALSE(read_ec) << read_ec.message();
  EXPECT_TRUE(received == sent) << "the bytes that came out of TLS differ from those written";

  // The peer stops reading; a large write stays in flight; destroying the socket ends it.
  const auto big = std::make_shared<std::string>(32 << 20, 'x');
  error_code big_ec;
  bool big_done = false;
  s->async_write_some(asio::buffer(*big), [&, big](error_code ec, std::size_t) {
    big_ec = ec;
    big_done = true;
  });
  io.run_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(big_done);
  s.reset();
  io.run_for(std::chrono::milliseconds(200));
  EXPECT_TRUE(big_done);
  EXPECT_TRUE(big_ec);
}

TEST(CoalescingSocket, SynchronousBatchingWaitsForFlush) {
  asio::io_context io;
  auto [a, b] = connected_pair(io);
  CoalescingSocket s(std::move(a));
  s.sync_batch(true);
  std::string sent;
  for (int i = 0; i < 30; ++i) {
    const std::string r = record(0, static_cast<std::uint32_t>(i), 64);
    sent += r;
    error_code ec;
    EXPECT_EQ(s.write_some(asio::buffer(r), ec), r.size());
    ASSERT_FALSE(ec);
  }
  char probe = 0;
  EXPECT_EQ(::recv(b.native_handle(), &probe, 1, MSG_DONTWAIT), -1);
  // A write too large to batch takes the batch with it, in order.
  const std::string large = record(0, 30, std::size_t{100} * 1024);
  sent += large;
  error_code ec;
  std::size_t done = 0;
  while (done < large.size())
    done += s.write_some(asio::buffer(large.data() + done, large.size() - done), ec);
  ASSERT_FALSE(ec);
  const std::string tail = record(0, 31, 10);
  sent += tail;
  s.write_some(asio::buffer(tail), ec);
  ASSERT_TRUE(s.flush(ec));
  std::string got(sent.size(), '\0');
  asio::read(b, asio::buffer(got));
  EXPECT_EQ(got, sent);
}

// A synchronous WebSocket client that batches its writes closes: Beast writes the close frame
// (small: batched) and then reads for the reply; that read flushes the batch first, or both
// ends would wait for each other forever (the relay benchmark's publisher did).
TEST(CoalescingSocket, ASynchronousReadFlushesTheBatchBeforeItWaits) {
  namespace websocket = boost::beast::websocket;
  asio::io_context io;
  tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  const auto port = acceptor.local_endpoint().port();
  constexpr int kMessages = 50;
  int server_got = 0;
  boost::beast::error_code server_end;
  std::thread server([&] {
    websocket::stream<tcp::socket> ws(acceptor.accept());
    ws.accept();
    for (;;) {
      boost::beast::flat_buffer buf;
      ws.read(buf, server_end);  // answers the close, then ends with `closed`
      if (server_end) break;
      ++server_got;
    }
  });
  asio::io_context cio;
  websocket::stream<CoalescingSocket> ws(cio);
  boost::beast::get_lowest_layer(ws).connect({asio::ip::make_address("127.0.0.1"), port});
  ws.handshake("127.0.0.1", "/");
  ws.next_layer().sync_batch(true);
  ws.binary(true);
  for (int i = 0; i < kMessages; ++i) ws.write(asio::buffer(std::string(100, 'm')));
  ASSERT_TRUE(ws.next_layer().unflushed_bytes() > 0);  // batched: the peer has none yet
  // A server that never got the close would hold this forever: a watchdog ends it instead.
  std::atomic<bool> closed{false};
  std::thread watchdog([&] {
    for (int i = 0; i < 500 && !closed.load(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!closed.load()) boost::beast::get_lowest_layer(ws).shutdown(tcp::socket::shutdown_both);
  });
  error_code ec;
  ws.close(websocket::close_code::normal, ec);
  closed = true;
  watchdog.join();
  server.join();
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(server_got, kMessages);
  EXPECT_EQ(server_end, websocket::error::closed);
}

}  // namespace
}  // namespace sluice::relay
