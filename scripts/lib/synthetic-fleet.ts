import { SingleBar } from 'cli-progress';
import { type SyntheticDevice, startSyntheticDevice } from '@floe/simulator';

/**
 * `count` synthetic devices enrolled and connected to `serverUrl`, 20 at a time, with a progress bar:
 * ranks 2, 4, 8, 8 in turn over `modules`, updates drawn from two distributions.
 */
export async function connectFleet(
  serverUrl: string,
  joinToken: string,
  count: number,
  modules: string[],
): Promise<SyntheticDevice[]> {
  const devices: SyntheticDevice[] = [];
  const bar = new SingleBar({ format: 'connecting {bar} {value}/{total} clients' });
  bar.start(count, 0);
  try {
    for (let i = 0; i < count; i += 20) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(20, count - i) }, (_, k) =>
          startSyntheticDevice({
            serverUrl,
            joinToken,
            plan: { rank: [2, 4, 8, 8][(i + k) % 4] as number, targetModules: modules },
            distribution: { seed: (i + k) % 2, scale: 0.02, noise: 0.5 },
            clientSeed: i + k,
          }),
        ),
      );
      devices.push(...batch);
      bar.update(devices.length);
    }
  } catch (error) {
    devices.forEach((d) => d.stop());
    throw error;
  } finally {
    bar.stop();
  }
  return devices;
}
