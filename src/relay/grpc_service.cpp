#include "grpc_service.hpp"

namespace sluice::relay {

// The generated service's handlers decode requests before the reactor sees them; these take the
// same methods (indices in relay.proto's order) with the request left as bytes (and Subscribe's
// responses too: grpc_subscribe.cpp encodes them). gRPC's handler templates take any request
// and response types.
GrpcService::GrpcService(RelayCore& core) : core_(core) {
  capture_protobuf_log();  // before any call can decode
  MarkMethodCallback(0, new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer, v1::PublishEvent>(
                            [this](grpc::CallbackServerContext* ctx) { return publish(ctx); }));
  MarkMethodCallback(
      1, new grpc::internal::CallbackServerStreamingHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
             [this](grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req) {
               return subscribe(ctx, req);
             }));
  MarkMethodCallback(3, new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer, v1::WorkEvent>(
                            [this](grpc::CallbackServerContext* ctx) { return work(ctx); }));
}

Outcome<Who> caller(RelayCore& core, const grpc::CallbackServerContext* ctx) {
  const auto& metadata = ctx->client_metadata();
  const auto it = metadata.find("authorization");
  std::string_view token;
  if (it != metadata.end())
    token = Access::bearer_token(std::string_view(it->second.data(), it->second.size()));
  // Under mutual TLS the client's verified certificate may name the principal.
  const auto auth = ctx->auth_context();
  std::string cn;
  if (auth) {
    const auto names = auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
    if (!names.empty()) cn.assign(names.front().data(), names.front().size());
  }
  return core.access.authenticate(token, cn);
}

// Stats: the topics the caller may see (its stats patterns).
grpc::ServerUnaryReactor* GrpcService::Stats(grpc::CallbackServerContext* ctx,
                                             const v1::StatsRequest* /*req*/,
                                             v1::StatsReply* reply) {
  auto* r = ctx->DefaultReactor();
  auto who = caller(core_, ctx);
  if (!who) {
    r->Finish(to_grpc(core_, who.refusal()));
    return r;
  }
  const auto reader = StatsReader::join(core_.topics, *who);
  if (!reader) {
    r->Finish(to_grpc(core_, reader.refusal()));
    return r;
  }
  const StatsSnapshot stats = reader->snapshot();
  reply->set_json(stats_text(stats.json));
  for (const TopicSummary& t : stats.topics) {  // (the typed figures, from the same reads)
    auto* out = reply->add_topics();
    out->set_name(t.name);
    out->set_mode(t.mode);
    out->set_published(t.published);
    out->set_published_bytes(t.published_bytes);
    out->set_subscribers(t.subscribers);
    out->set_queue_bytes(t.queue_bytes);
    out->set_retained_bytes(t.retained_bytes);
    out->set_lost(t.lost);
    out->set_evicted(t.evicted);
    out->set_throttled_publishers(t.throttled_publishers);
    out->set_epoch(t.epoch);
    out->set_retained_from(t.retained_from);
  }
  r->Finish(grpc::Status::OK);
  return r;
}

}  // namespace sluice::relay
