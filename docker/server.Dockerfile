# syntax=docker/dockerfile:1
# The coordination server. Build from the repository root:
#   docker build -f docker/server.Dockerfile -t floe-ts/server .
# or `docker compose -f docker/compose.yml up` (tokens from the environment, state in a volume).

# --- build: compile the workspace packages the server needs and assemble a production tree ---
FROM node:20-bookworm-slim AS build
# better-sqlite3 compiles its native addon here when no prebuilt binary matches
RUN apt-get update \
  && apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
RUN npm install -g pnpm@10
WORKDIR /src
COPY package.json pnpm-lock.yaml pnpm-workspace.yaml .npmrc tsconfig.base.json ./
# the whole workspace: `pnpm deploy` resolves the root package, which names every workspace package;
# install, compile and deploy are filtered to the server and what it depends on
COPY packages packages
RUN pnpm install --frozen-lockfile --filter @floe/server...
RUN pnpm exec tsc -b packages/server
# a self-contained copy of @floe/server with its production dependencies (workspace ones included)
RUN pnpm --filter @floe/server deploy --prod --legacy /out

# --- runtime: no compiler, no sources, not root ---
FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    FLOE_HOST=0.0.0.0 \
    FLOE_PORT=8080 \
    FLOE_DATA_DIR=/data
WORKDIR /app
COPY --from=build --chown=node:node /out ./
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.FLOE_PORT || 8080) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "dist/main.js"]
