// Identifier rules of the Parley protocol (docs/protocol.md, section 2), shared by every module.

const ID_RE = /^[A-Za-z0-9_.@-]{1,64}$/;

/** True if `s` is a valid user, group, device or client message id. */
export function isValidId(s) {
  return typeof s === "string" && ID_RE.test(s);
}

/**
 * The conversation id of the direct chat between users a and b. The server compares bytewise;
 * ids are ASCII, so JavaScript's UTF-16 comparison orders them the same way.
 */
export function directConv(a, b) {
  return a <= b ? `d:${a}:${b}` : `d:${b}:${a}`;
}

export function groupConv(group) {
  return `g:${group}`;
}

/**
 * Splits a conversation id: {kind: "direct", users: [a, b]} or {kind: "group", group}.
 * Ids cannot contain ':', so splitting on it is unambiguous.
 */
export function parseConv(conv) {
  const parts = conv.split(":");
  if (parts[0] === "g" && parts.length === 2) return { kind: "group", group: parts[1] };
  if (parts[0] === "d" && parts.length === 3) return { kind: "direct", users: [parts[1], parts[2]] };
  return { kind: "unknown" };
}

/** The other user of a direct conversation (the user itself for a note-to-self). */
export function peerOf(conv, me) {
  const c = parseConv(conv);
  if (c.kind !== "direct") return null;
  return c.users[0] === me ? c.users[1] : c.users[0];
}

/**
 * A fresh client message id. It must be unique per sender across all of the user's devices and
 * survive reloads (it is stored with the pending message), so it mixes the time with 64 random
 * bits rather than counting.
 */
export function newCmid() {
  const rnd = new Uint32Array(2);
  crypto.getRandomValues(rnd);
  return `w-${Date.now().toString(36)}-${rnd[0].toString(36)}${rnd[1].toString(36)}`;
}

/** A device id for a browser tab that has none yet, e.g. "web-k3f9q2". */
export function newDeviceId() {
  const rnd = new Uint32Array(1);
  crypto.getRandomValues(rnd);
  return `web-${rnd[0].toString(36).slice(0, 6)}`;
}
