// Package mattermost owns mmgate's small Mattermost REST API v4 client: the few
// calls a bot needs to resolve users, open direct channels, upload files, create
// and read posts, and the classification of their failures (APIError, Retryable,
// RetryAfterOf). It is built on net/http, not on Mattermost's model package.
//
// It must never: retry on its own (the relay decides, with Retryable and
// RetryAfterOf), buffer an upload whole (files are streamed through an io.Pipe),
// send cookies (the cookie is checked before the Authorization header by the
// server), or log the token or message contents.
//
// # Calls and limits
//
// Every call sends "Authorization: Bearer <token>", runs under a per-call
// timeout (Options.RequestTimeout, Options.UploadTimeout) on top of the caller's
// context, reads at most a bounded number of response bytes, and counts itself
// in metrics.MattermostRequests{op,status} ("error" when no HTTP status came
// back). Path segments are escaped (an e-mail address may hold "+" or "/").
//
// Errors are *fault.Error values wrapping either an *APIError (non-2xx answer),
// a *DecodeError (2xx whose body is not what the call expects) or a transport
// error. Fault kinds follow the status: 400 invalid, 401 unauthorized, 404 not
// found, 409 conflict, 413 too large, 408/429/5xx (except 501) and transport
// errors temporary, any other status (403, 501, …) and a DecodeError
// permanent. A failure of an Upload's own reader is returned as is, wrapped
// with %w, so the caller sees the blob store's error.
//
// Retryable decisions, for the relay:
//   - APIError: 408, 429 and 5xx except 501 (Mattermost answers 501 for a
//     disabled feature, which no retry fixes).
//   - Transport errors (refused, reset, EOF, DNS, TLS, a deadline of the
//     request's context): retryable. A canceled context is not: the caller
//     asked to stop.
//   - DecodeError (a 2xx with an unparseable or oversized body): NOT retryable.
//     The server reported success, so for CreatePost the post probably exists;
//     repeating it blindly risks a duplicate. The relay should reconcile with
//     ChannelPostsSince instead (see below).
//
// # Idempotency of CreatePost: pending_post_id
//
// Read from mattermost/mattermost server/channels/app/post.go
// (deduplicateCreatePost, CreatePost), server/channels/app/server.go and
// server/public/model/post.go, and checked against Mattermost 11.4:
//
//   - A POST /posts carrying a non-empty "pending_post_id" is looked up in
//     Server.seenPendingPostIdsCache. If the id is unknown it is stored (value
//     "") and the post is created; once saved, the entry is set to the new
//     post's id with a TTL of 30 s (pendingPostIDsCacheTTL), counted from the
//     completion of the first create. Later hits do not extend it. Measured on
//     11.4: a repeat after 25 s returned the first post, a repeat after 32 s
//     created a second post.
//   - A repeat inside the window answers 201 with the FIRST post (its message,
//     props and file ids, whatever the repeat carried), "pending_post_id":"" and
//     no metadata, and emits no new WebSocket event.
//   - A repeat while the first is still being saved gets 500
//     "api.post.deduplicate_create_post.pending" (retryable here); retrying a
//     moment later returns the post.
//   - If the first create failed, its entry is removed, so a retry creates
//     normally.
//   - Format: none. Post.IsValid never looks at PendingPostId and the field is
//     not stored (GET /posts/{id} returns ""). It is a key in an in-memory LRU
//     cache of 25,000 entries per server process: lost on restart, evicted
//     early under load, and (without a shared cache provider) not shared by the
//     nodes of a cluster.
//   - The key is global, not per user or channel: if it matches a post that
//     the caller may read, that post is returned as if it were the caller's;
//     if the caller may not read it, the key is ignored and a new post made.
//
// So pending_post_id deduplicates only quick repeats (a lost response, a
// timeout, a retry within seconds). It cannot carry exactly-once across a crash
// followed by a restart that takes longer than 30 s. The relay should:
//  1. send a deterministic, namespaced, unique pending_post_id per (message,
//     destination, part), e.g. PendingPostID(msgID, channelID, part);
//  2. also put that key in a post prop, and durably note "attempt started" with
//     a timestamp before CreatePost;
//  3. when it resumes a part whose attempt had started, first look for the key
//     among ChannelPostsSince(attemptStart - skew) posts by the bot, and post
//     only if it is absent.
//
// # Reading users by e-mail
//
// GET /users/email/{email} answers 403
// "api.user.get_user_by_email.permissions.app_error" unless
// PrivacySettings.ShowEmailAddress is true or the caller is a system admin
// (api4/user.go getUserByEmail; the address is lowercased first). It also
// answers 403 when view-members restrictions hide the user from the caller. The
// default is true (model/config.go PrivacySettings.setDefaults) and a bot reads
// users by e-mail on a default 11.4; an administrator who turns it off breaks
// lookups by e-mail, so the directory should be able to fall back to user
// names (from LDAP or a static map).
package mattermost
