// Display helpers: times, presence wording, avatar colours. Pure functions, no DOM.

const pad = (n) => String(n).padStart(2, "0");

/** "14:05" today, "Mon 14:05" within a week, "3 Mar" this year, else "3 Mar 2024". */
export function shortTime(ts, now = Date.now()) {
  if (!ts) return "";
  const d = new Date(ts);
  const today = new Date(now);
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (d.toDateString() === today.toDateString()) return hm;
  if (now - ts < 6 * 86400000 && ts < now) return `${d.toLocaleDateString(undefined, { weekday: "short" })} ${hm}`;
  const opts = { day: "numeric", month: "short" };
  if (d.getFullYear() !== today.getFullYear()) opts.year = "numeric";
  return d.toLocaleDateString(undefined, opts);
}

/** Full date and time for tooltips and machine-readable <time> elements. */
export function fullTime(ts) {
  return ts ? new Date(ts).toLocaleString() : "";
}

/** "online", "busy", "last seen 5 min ago", "offline". */
export function presenceText(p, now = Date.now()) {
  if (!p) return "";
  if (p.status === "online") return "online";
  if (p.status === "busy") return "busy";
  if (!p.last_seen) return "offline";
  const ago = Math.max(0, now - p.last_seen);
  if (ago < 60000) return "last seen just now";
  if (ago < 3600000) return `last seen ${Math.floor(ago / 60000)} min ago`;
  return `last seen ${shortTime(p.last_seen, now)}`;
}

/** A stable hue for a name, so each person keeps their avatar colour. */
export function hueOf(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

export function initials(name) {
  const parts = name.split(/[\s._@-]+/).filter(Boolean);
  const s = parts.length > 1 ? parts[0][0] + parts[1][0] : name.slice(0, 2);
  return s.toUpperCase();
}

/** "bob is typing…", "bob and carol are typing…", "3 people are typing…". */
export function typingText(users) {
  if (users.length === 0) return "";
  if (users.length === 1) return `${users[0]} is typing…`;
  if (users.length === 2) return `${users[0]} and ${users[1]} are typing…`;
  return `${users.length} people are typing…`;
}

/** One line describing a group membership event. */
/** "bob", "bob and you", "bob, carol and you". */
function listOf(names) {
  if (names.length <= 1) return names.join("");
  return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
}

export function groupEventText(n, me) {
  const who = (u) => (u === me ? "you" : u);
  const list = listOf(n.users.map(who));
  const by = n.by === me ? "You" : n.by;
  switch (n.change) {
    case "created":
      return `${by} created the group with ${listOf(n.users.filter((u) => u !== n.by).map(who)) || "nobody else"}`;
    case "added":
      return `${by} added ${list}`;
    case "removed":
      return `${by} removed ${list}`;
    case "left":
      return `${listOf(n.users.map((u) => (u === me ? "You" : u)))} left`;
    case "owner":
      return n.users[0] === me ? "You are now the owner" : `${n.users[0]} is now the owner`;
    default:
      return `${n.change}: ${list}`;
  }
}
