// Relay configuration: precedence (defaults < file < environment < flags), validation with
// messages that name the setting, its source, the value and the range.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>

#include "sluice/relay/config.hpp"

namespace sluice {
namespace {

// A TOML file that removes itself.
class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    char name[] = "/tmp/sluice_config_XXXXXX";
    const int fd = mkstemp(name);
    close(fd);
    path_ = name;
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

using Env = std::map<std::string, std::string>;

RelayConfig load(const std::optional<std::string>& file, const Env& env = {},
                 const Overrides& cli = {}) {
  return load_relay_config(
      file,
      [&](const char* name) -> const char* {
        const auto it = env.find(name);
        return it == env.end() ? nullptr : it->second.c_str();
      },
      cli);
}

std::string error_of(const std::optional<std::string>& file, const Env& env = {},
                     const Overrides& cli = {}) {
  try {
    (void)load(file, env, cli);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(RelayConfig, EmbeddedDefaultsAreTheDocumentedOnes) {
  const RelayConfig c = load(std::nullopt);
  EXPECT_EQ(c.host, "127.0.0.1");
  EXPECT_EQ(c.max_frame_bytes, 5U << 20);  // STREAM_MAX_FRAME_SIZE_MB = 5
  EXPECT_EQ(c.max_sessions, 10U);          // STREAM_MAX_SESSIONS = 10
  EXPECT_DOUBLE_EQ(c.drop_threshold, 0.10);
  EXPECT_DOUBLE_EQ(c.slowdown_threshold, 0.30);
  EXPECT_EQ(c.defaults.max_queue_bytes, 100U << 20);  // SLUICE_MAX_QUEUE_BYTES = 100 MiB
  EXPECT_EQ(c.defaults.max_wait.count(), 5000);
  EXPECT_TRUE(c.auto_create);
  EXPECT_EQ(c.viewer_send_buffer_bytes, 0U);  // the kernel's own
}

TEST(RelayConfig, FileThenEnvironmentThenFlagsEachOverrideTheLayerBelow) {
  TempFile f(R"(
[server]
grpc_port = 9000
http_port = 9001
[topics]
max_queue_bytes = "8MiB"
)");
  RelayConfig c = load(f.path());
  EXPECT_EQ(c.grpc_port, 9000);
  EXPECT_EQ(c.defaults.max_queue_bytes, 8U << 20);
  c = load(f.path(), {{"SLUICE_GRPC_PORT", "9100"}, {"SLUICE_MAX_QUEUE_BYTES", "1024"}});
  EXPECT_EQ(c.grpc_port, 9100);
  EXPECT_EQ(c.http_port, 9001);
  EXPECT_EQ(c.defaults.max_queue_bytes, 1024U);
  c = load(f.path(), {{"SLUICE_GRPC_PORT", "9100"}}, {{"grpc-port", "0"}});
  EXPECT_EQ(c.grpc_port, 0);  // 0: ephemeral
}

TEST(RelayConfig, DeclaredTopicsInheritTheFinalDefaults) {
  TempFile f(R"(
[topics]
auto_create = false
depth = 8
[[topic]]
name = "camera.front"
mode = "realtime"
[[topic]]
name = "logs"
max_wait_ms = 250
)");
  const RelayConfig c = load(f.path(), {{"SLUICE_DEPTH", "2"}});
  EXPECT_FALSE(c.auto_create);
  ASSERT_EQ(c.topics.size(), 2U);
  const TopicConfig* cam = c.topic("camera.front");
  ASSERT_NE(cam, nullptr);
  EXPECT_EQ(cam->mode, TopicMode::realtime);
  EXPECT_EQ(cam->depth, 2U);  // environment beat the file's default
  EXPECT_EQ(c.topic("logs")->max_wait.count(), 250);
  EXPECT_EQ(c.topic("nope"), nullptr);
}

TEST(RelayConfig, ALosslessTopicsItemLimitIsASetting) {
  EXPECT_EQ(load(std::nullopt).defaults.max_queue_items, 1024U);
  EXPECT_EQ(load(std::nullopt, {{"SLUICE_MAX_QUEUE_ITEMS", "65536"}}).defaults.max_queue_items,
            65536U);
  EXPECT_NE(error_of(std::nullopt, {{"SLUICE_MAX_QUEUE_ITEMS", "4"}}).find("8 to 65536"),
            std::string::npos);
}

TEST(RelayConfig, RetentionIsASettingWithinALosslessTopicsRing) {
  EXPECT_EQ(load(std::nullopt).defaults.retain_items, 0U);
  EXPECT_EQ(load(std::nullopt, {{"SLUICE_RETAIN_ITEMS", "512"}}).defaults.retain_items, 512U);
  TempFile file("[[topic]]\nname = \"cam\"\nmode = \"realtime\"\nretain_items = 30000\n");
  EXPECT_EQ(load(file.path()).topics.at(0).retain_items, 30000U);  // (realtime: any)
  const std::string error = error_of(std::nullopt, {{"SLUICE_RETAIN_ITEMS", "2000"}});
  EXPECT_NE(error.find("retain_items (SLUICE_RETAIN_ITEMS) = 2000 is above max_queue_items = 1024"),
            std::string::npos)
      << error;
  TempFile declared("[[topic]]\nname = \"t\"\nmax_queue_items = 8\nretain_items = 9\n");
  EXPECT_NE(error_of(declared.path()).find("[[topic]] \"t\" retain_items"), std::string::npos);
}

// A lossless topic's eviction of a stuck subscriber is opt-in, and never sooner than its
// producer's patience: below max_wait_ms it is refused at start-up, naming both.
TEST(RelayConfig, EvictAfterIsOptInAndNoShorterThanMaxWait) {
  EXPECT_EQ(load(std::nullopt).defaults.evict_after.count(), 0);
  EXPECT_EQ(load(std::nullopt, {{"SLUICE_EVICT_AFTER_MS", "8000"}}).defaults.evict_after.count(),
            8000);
  const std::string error = error_of(std::nullopt, {{"SLUICE_EVICT_AFTER_MS", "1000"}});
  EXPECT_NE(error.find("evict_after_ms (SLUICE_EVICT_AFTER_MS) = 1000 is below max_wait_ms = 5000"),
            std::string::npos)
      << error;
  TempFile declared(
      "[[topic]]\nname = \"t\"\nmax_wait_ms = 300\nevict_after_ms = 1000\n"
      "[[topic]]\nname = \"u\"\nmax_wait_ms = 300\nevict_after_ms = 100\n");
  EXPECT_NE(error_of(declared.path()).find("[[topic]] \"u\" evict_after_ms"), std::string::npos);
  TempFile fine("[[topic]]\nname = \"t\"\nmax_wait_ms = 300\nevict_after_ms = 1000\n");
  EXPECT_EQ(load(fine.path()).topics.at(0).evict_after.count(), 1000);
}

TEST(RelayConfig, HostsAreIpAddressesOrLocalhost) {
  EXPECT_EQ(load(std::nullopt, {{"SLUICE_HOST", "localhost"}}).host, "127.0.0.1");
  EXPECT_EQ(load(std::nullopt, {{"SLUICE_HOST", "[::1]"}}).host, "::1");
  EXPECT_EQ(
      load(std::nullopt, {{"SLUICE_HOST", "::"}, {"SLUICE_ALLOW_ANONYMOUS_ON_NETWORK", "1"}}).host,
      "::");
  EXPECT_NE(error_of(std::nullopt, {{"SLUICE_HOST", "relay.example"}}).find("SLUICE_HOST"),
            std::string::npos);
}

TEST(RelayConfig, BadValuesNameTheSettingTheSourceAndTheRange) {
  EXPECT_EQ(error_of(std::nullopt, {{"STREAM_MAX_FRAME_SIZE_MB", "0"}}),
            "invalid configuration: environment STREAM_MAX_FRAME_SIZE_MB = \"0\" (accepted: 1 KiB "
            "to 1024 MiB, in MiB (0.0009765625 to 1024))");
  // A limit that rounds to a few bytes would refuse every frame: below 1 KiB is refused.
  EXPECT_NE(
      error_of(std::nullopt, {{"STREAM_MAX_FRAME_SIZE_MB", "1e-9"}}).find("1 KiB to 1024 MiB"),
      std::string::npos);
  EXPECT_EQ(error_of(std::nullopt, {{"STREAM_MAX_FRAME_SIZE_MB", "0.0009765625"}}), "(no error)");
  EXPECT_NE(error_of(std::nullopt, {}, {{"grpc-port", "70000"}})
                .find("command line --grpc-port = \"70000\" (accepted: 0 to 65535"),
            std::string::npos);
  TempFile f("[limits]\nmax_sessions = -3\n");
  EXPECT_NE(error_of(f.path()).find("key limits.max_sessions = \"-3\" (accepted: 1 to 100000)"),
            std::string::npos)
      << error_of(f.path());
  EXPECT_NE(error_of(std::nullopt, {{"STREAM_DROP_THRESHOLD", "0.5"}})
                .find("slowdown_threshold (STREAM_SLOWDOWN_THRESHOLD) = 0.300000 is below"),
            std::string::npos);
  EXPECT_NE(error_of(std::nullopt, {{"SLUICE_AUTO_CREATE", "maybe"}}).find("true or false"),
            std::string::npos);
  EXPECT_EQ(error_of(std::nullopt, {{"SLUICE_VIEWER_SEND_BUFFER_BYTES", "100"}}),
            "invalid configuration: environment SLUICE_VIEWER_SEND_BUFFER_BYTES = \"100\" "
            "(accepted: 0 (the kernel's) or 4 KiB to 64 MiB; a number of bytes, or with KiB, MiB)");
  EXPECT_NE(error_of(std::nullopt, {}, {{"viewer-send-buffer-bytes", "1GiB"}})
                .find("--viewer-send-buffer-bytes = \"1GiB\""),
            std::string::npos);
  EXPECT_NE(error_of(std::nullopt, {{"SLUICE_MAX_QUEUE_BYTES", "2048GiB"}})
                .find("SLUICE_MAX_QUEUE_BYTES = \"2048GiB\" (accepted: 1 B to 1 TiB"),
            std::string::npos)
      << "a size is named as written, unit included";
  EXPECT_EQ(
      load(std::nullopt, {{"SLUICE_VIEWER_SEND_BUFFER_BYTES", "256KiB"}}).viewer_send_buffer_bytes,
      256U * 1024);
}

TEST(RelayConfig, UnknownKeysSyntaxErrorsAndBadTopicsAreRefused) {
  TempFile typo("[server]\ngprc_port = 1\n");
  EXPECT_NE(error_of(typo.path()).find("unknown key server.gprc_port"), std::string::npos);
  TempFile broken("[server\nhost = 1\n");
  EXPECT_NE(error_of(broken.path()).find("line 1"), std::string::npos) << error_of(broken.path());
  TempFile bad_name("[[topic]]\nname = \"has space\"\n");
  EXPECT_NE(error_of(bad_name.path()).find("may hold only letters"), std::string::npos);
  TempFile twice("[[topic]]\nname = \"a\"\n[[topic]]\nname = \"a\"\n");
  EXPECT_NE(error_of(twice.path()).find("declared twice"), std::string::npos);
  TempFile three("[[topic]]\nname = \"a\"\n[[topic]]\nname = \"b\"\n[[topic]]\nname = \"c\"\n");
  EXPECT_NE(error_of(three.path(), {{"SLUICE_MAX_TOPICS", "2"}}).find("limits.max_topics"),
            std::string::npos);
  EXPECT_EQ(load(three.path(), {{"SLUICE_MAX_TOPICS", "3"}}).topics.size(), 3U);
  EXPECT_NE(error_of(std::string("/nonexistent/relay.toml")).find("/nonexistent/relay.toml"),
            std::string::npos);
}

TEST(RelayConfig, ATopicDeclaresAStageWithItsSettings) {
  TempFile f(R"(
[[topic]]
name = "camera"
mode = "realtime"
stage = true
stage_fps = 15
stage_max_in_flight = 2
stage_worker_queue = 8
stage_task_timeout_ms = 500
stage_slow_ms = 250
[[topic]]
name = "lidar"
stage = true
stage_results = "lidar.points"
[[topic]]
name = "logs"
)");
  const RelayConfig c = load(f.path());
  const auto& cam = c.topic("camera")->stage;
  ASSERT_TRUE(cam);
  EXPECT_EQ(cam->fps, 15);
  EXPECT_EQ(cam->max_in_flight, 2U);
  EXPECT_EQ(cam->worker_queue, 8U);
  EXPECT_EQ(cam->task_timeout.count(), 500);
  EXPECT_EQ(cam->slow_latency.count(), 250);
  EXPECT_EQ(cam->results_topic, "camera.results");  // the default
  EXPECT_EQ(c.topic("lidar")->stage->results_topic, "lidar.points");
  EXPECT_FALSE(c.topic("logs")->stage);
  TempFile again(to_toml(c));
  EXPECT_EQ(to_toml(load(again.path())), to_toml(c));
}

TEST(RelayConfig, BadStageSettingsAreNamed) {
  TempFile fps("[[topic]]\nname = \"a\"\nstage = true\nstage_fps = 0\n");
  EXPECT_NE(error_of(fps.path()).find("key topic.stage_fps = \"0\" (accepted: 0.1 to 1000)"),
            std::string::npos)
      << error_of(fps.path());
  TempFile orphan("[[topic]]\nname = \"a\"\nstage_fps = 10\n");
  EXPECT_NE(error_of(orphan.path()).find("stage_* keys without stage = true"), std::string::npos)
      << error_of(orphan.path());
  TempFile self("[[topic]]\nname = \"a\"\nstage = true\nstage_results = \"a\"\n");
  EXPECT_NE(error_of(self.path()).find("a topic other than the stage's own"), std::string::npos)
      << error_of(self.path());
  TempFile flag("[[topic]]\nname = \"a\"\nstage = \"yes\"\n");
  EXPECT_NE(error_of(flag.path()).find("key topic.stage = \"yes\" (accepted: true or false)"),
            std::string::npos)
      << error_of(flag.path());
  TempFile typo("[[topic]]\nname = \"a\"\nstage_fsp = 1\n");
  EXPECT_NE(error_of(typo.path()).find("unknown key topic.stage_fsp"), std::string::npos);
}

TEST(RelayConfig, TopicNames) {
  EXPECT_EQ(topic_name_problem("camera.front-1_a"), "");
  EXPECT_NE(topic_name_problem(""), "");
  EXPECT_NE(topic_name_problem(std::string(129, 'a')), "");
  EXPECT_NE(topic_name_problem("a/b"), "");
  EXPECT_NE(topic_name_problem("quote\""), "");
}

TEST(RelayConfig, PrintedConfigurationLoadsBackTheSame) {
  TempFile f("[topics]\ndepth = 6\n[[topic]]\nname = \"t\"\nmode = \"realtime\"\n");
  const RelayConfig c = load(f.path(), {{"SLUICE_HTTP_PORT", "0"}});
  TempFile again(to_toml(c));
  const RelayConfig d = load(again.path());
  EXPECT_EQ(to_toml(c), to_toml(d));
}

TEST(RelayConfig, AnOpenRelayBindsLoopbackOnlyUnlessItSaysSo) {
  const std::string refusal = error_of(std::nullopt, {{"SLUICE_HOST", "0.0.0.0"}});
  EXPECT_NE(refusal.find("server.allow_anonymous_on_network"), std::string::npos) << refusal;
  EXPECT_EQ(load(std::nullopt,
                 {{"SLUICE_HOST", "0.0.0.0"}, {"SLUICE_ALLOW_ANONYMOUS_ON_NETWORK", "true"}})
                .host,
            "0.0.0.0");
  // A principal without a token that may read or publish everything is everyone: open too.
  TempFile everyone(
      "[server]\nhost = \"0.0.0.0\"\n[[principal]]\nname = \"all\"\n"
      "publish = [\">\"]\nsubscribe = [\">\"]\nstats = [\">\"]\n");
  const std::string open = error_of(everyone.path());
  EXPECT_NE(open.find("a [[principal]] without a token may publish or subscribe to every topic"),
            std::string::npos)
      << open;
  EXPECT_NE(open.find("server.allow_anonymous_on_network"), std::string::npos) << open;
  TempFile guarded(
      "[server]\nhost = \"0.0.0.0\"\n[[principal]]\nname = \"cam\"\n"
      "token = \"s3cret\"\npublish = [\"camera.*\"]\n");
  const RelayConfig c = load(guarded.path());
  ASSERT_EQ(c.principals.size(), 1U);
  EXPECT_EQ(c.principals[0].token_sha256, token_sha256("s3cret"));
  EXPECT_EQ(c.principals[0].publish, std::vector<std::string>{"camera.*"});
  // What `sluice config` prints holds the token's hash, never the token.
  EXPECT_EQ(to_toml(c).find("s3cret"), std::string::npos);
  EXPECT_NE(to_toml(c).find(token_sha256("s3cret")), std::string::npos);
}

TEST(RelayConfig, PrincipalsAreCheckedWhenTheFileIsRead) {
  TempFile both("[[principal]]\nname = \"a\"\ntoken = \"x\"\ntoken_sha256 = \"" +
                std::string(64, 'a') + "\"\n");
  EXPECT_NE(error_of(both.path()).find("both token and token_sha256"), std::string::npos);
  TempFile bad_hash("[[principal]]\nname = \"a\"\ntoken_sha256 = \"xyz\"\n");
  EXPECT_NE(error_of(bad_hash.path()).find("64 lower-case hex digits"), std::string::npos);
  TempFile bad_pattern("[[principal]]\nname = \"a\"\ntoken = \"x\"\npublish = [\"a.>.b\"]\n");
  EXPECT_NE(error_of(bad_pattern.path()).find("'>' may only be the last segment"),
            std::string::npos);
  TempFile two_anonymous("[[principal]]\nname = \"a\"\n[[principal]]\nname = \"b\"\n");
  EXPECT_NE(error_of(two_anonymous.path()).find("more than one [[principal]] without a token"),
            std::string::npos);
  TempFile twice(
      "[[principal]]\nname = \"a\"\ntoken = \"x\"\n[[principal]]\nname = \"a\"\n"
      "token = \"y\"\n");
  EXPECT_NE(error_of(twice.path()).find("declared twice"), std::string::npos);
  TempFile unknown("[[principal]]\nname = \"a\"\nread = [\">\"]\n");
  EXPECT_NE(error_of(unknown.path()).find("unknown key principal.read"), std::string::npos);
  EXPECT_EQ(load(std::nullopt, {{"SLUICE_ALLOWED_ORIGINS", "https://a.example, http://b:*"}})
                .allowed_origins,
            (std::vector<std::string>{"https://a.example", "http://b:*"}));
  EXPECT_NE(error_of(std::nullopt, {{"SLUICE_ALLOWED_ORIGINS", "evil.example"}})
                .find("SLUICE_ALLOWED_ORIGINS"),
            std::string::npos);
}

TEST(RelayConfig, ClusterTopicsNeedNatsAndTheNatsSettingsAreChecked) {
  TempFile cluster("[[topic]]\nname = \"cam\"\nscope = \"cluster\"\n");
  const std::string e = error_of(cluster.path());
  EXPECT_NE(e.find("scope = \"cluster\""), std::string::npos) << e;
  EXPECT_NE(e.find("nats.urls (SLUICE_NATS_URLS)"), std::string::npos) << e;
  TempFile ok(
      "[nats]\nurls = [\"nats://10.0.0.5:4222\", \"nats://10.0.0.6:4222\"]\nreplicas = 3\n"
      "storage = \"memory\"\nname = \"edge-1\"\n[topics]\nscope = \"cluster\"\n"
      "[[topic]]\nname = \"logs\"\nscope = \"local\"\n");
  const RelayConfig c = load(ok.path());
  EXPECT_EQ(c.nats.urls.size(), 2U);
  EXPECT_EQ(c.nats.replicas, 3U);
  EXPECT_EQ(c.nats.storage, "memory");
  EXPECT_EQ(c.nats.name, "edge-1");
  EXPECT_EQ(c.defaults.scope, TopicScope::cluster);
  EXPECT_EQ(c.topics.at(0).scope, TopicScope::local);
  EXPECT_TRUE(c.nats.discovered_servers);
  // Printed and read back: the same.
  TempFile again(to_toml(c));
  EXPECT_EQ(to_toml(load(again.path())), to_toml(c));
  EXPECT_NE(error_of(std::nullopt, {{"SLUICE_NATS_URLS", "http://x:1"}}).find("SLUICE_NATS_URLS"),
            std::string::npos);
  EXPECT_NE(error_of(std::nullopt, {{"SLUICE_NATS_REPLICAS", "7"}}).find("1 to 5"),
            std::string::npos);
  EXPECT_NE(error_of(std::nullopt, {{"SLUICE_NATS_SUBJECT_PREFIX", "a..b"}})
                .find("SLUICE_NATS_SUBJECT_PREFIX"),
            std::string::npos);
  EXPECT_NE(error_of(std::nullopt, {{"SLUICE_TOPIC_SCOPE", "global"}}).find("local or cluster"),
            std::string::npos);
  TempFile staged(
      "[nats]\nurls = \"nats://127.0.0.1:4222\"\n[[topic]]\nname = \"s\"\nstage = true\n"
      "scope = \"cluster\"\n");
  EXPECT_NE(error_of(staged.path()).find("declares a stage"), std::string::npos);
}

}  // namespace
}  // namespace sluice
